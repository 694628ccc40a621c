//! pcap and pcapng files of captured packets, written by the `pcap-file` crate.

use std::borrow::Cow;
use std::io::Write;
use std::time::UNIX_EPOCH;

use pcap_file::pcap::{PcapHeader, PcapPacket, PcapWriter};
use pcap_file::pcapng::blocks::enhanced_packet::EnhancedPacketBlock;
use pcap_file::pcapng::blocks::interface_description::InterfaceDescriptionBlock;
use pcap_file::pcapng::PcapNgWriter;
use pcap_file::DataLink;

use super::Packet;
use crate::chain::ChainHook;
use crate::error::{Error, ErrorKind, Result};

/// What the captured bytes start with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LinkType {
    /// An Ethernet header (XDP and tc): LINKTYPE_ETHERNET, 1.
    Ethernet,
    /// An IPv4 or IPv6 header, told apart by its version (the LWT hooks): LINKTYPE_RAW, 101.
    Raw,
}

impl LinkType {
    /// The link type of packets captured at `hook`.
    pub fn of(hook: ChainHook) -> LinkType {
        if hook.starts_at_ip() {
            LinkType::Raw
        } else {
            LinkType::Ethernet
        }
    }

    /// The LINKTYPE_* number in pcap files.
    pub fn number(self) -> u32 {
        match self {
            LinkType::Ethernet => 1,
            LinkType::Raw => 101,
        }
    }

    fn data_link(self) -> DataLink {
        match self {
            LinkType::Ethernet => DataLink::ETHERNET,
            LinkType::Raw => DataLink::RAW,
        }
    }
}

/// The file format of a [`CaptureWriter`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CaptureFormat {
    /// Classic pcap (microsecond timestamps).
    Pcap,
    /// pcapng (one interface description, nanosecond-capable timestamps).
    PcapNg,
}

enum Inner<W: Write> {
    Pcap(PcapWriter<W>),
    PcapNg(PcapNgWriter<W>),
}

/// Writes packets of one link type to a pcap or pcapng stream that tcpdump and Wireshark read.
///
/// # Examples
///
/// ```
/// use lwtun::capture::{CaptureFormat, CaptureWriter, LinkType};
///
/// let w = CaptureWriter::new(Vec::new(), CaptureFormat::Pcap, LinkType::Raw, 1536)?;
/// let bytes = w.into_inner();
/// assert_eq!(&bytes[..4], &0xa1b2c3d4u32.to_ne_bytes()); // the pcap magic
/// # Ok::<(), lwtun::Error>(())
/// ```
pub struct CaptureWriter<W: Write> {
    inner: Inner<W>,
    link: LinkType,
    snaplen: u32,
    written: u64,
}

impl<W: Write> std::fmt::Debug for CaptureWriter<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaptureWriter")
            .field("link", &self.link)
            .field("snaplen", &self.snaplen)
            .field("written", &self.written)
            .finish()
    }
}

fn pcap_err(op: &str, e: pcap_file::PcapError) -> Error {
    match e {
        pcap_file::PcapError::IoError(io) => Error::io(op.to_string(), io),
        other => Error::other(ErrorKind::Io, op.to_string(), other.to_string()),
    }
}

impl<W: Write> CaptureWriter<W> {
    /// Starts a stream: writes the file header (pcap) or section and interface blocks (pcapng).
    ///
    /// # Errors
    ///
    /// Io when the header cannot be written.
    pub fn new(writer: W, format: CaptureFormat, link: LinkType, snaplen: u32) -> Result<Self> {
        let op = "start capture file";
        let inner = match format {
            CaptureFormat::Pcap => {
                let header = PcapHeader {
                    snaplen,
                    datalink: link.data_link(),
                    // The host's byte order, as libpcap writes (the crate defaults to big endian).
                    endianness: pcap_file::Endianness::native(),
                    ..Default::default()
                };
                Inner::Pcap(PcapWriter::with_header(writer, header).map_err(|e| pcap_err(op, e))?)
            }
            CaptureFormat::PcapNg => {
                let mut w = PcapNgWriter::new(writer).map_err(|e| pcap_err(op, e))?;
                w.write_pcapng_block(InterfaceDescriptionBlock::new(link.data_link(), snaplen))
                    .map_err(|e| pcap_err(op, e))?;
                Inner::PcapNg(w)
            }
        };
        Ok(CaptureWriter {
            inner,
            link,
            snaplen,
            written: 0,
        })
    }

    /// Appends a packet.
    ///
    /// # Errors
    ///
    /// InvalidInput for a packet of another link type (a stream holds one); Io on a write error.
    pub fn write(&mut self, packet: &Packet) -> Result<()> {
        let op = "write captured packet";
        if packet.link_type() != self.link {
            return Err(Error::invalid_input(
                op,
                format!(
                    "a {:?} packet (from {}) in a {:?} capture file",
                    packet.link_type(),
                    packet.hook,
                    self.link
                ),
            ));
        }
        let ts = packet.time.duration_since(UNIX_EPOCH).unwrap_or_default();
        let keep = packet.data.len().min(self.snaplen as usize);
        let data = &packet.data[..keep];
        match &mut self.inner {
            Inner::Pcap(w) => w
                .write_packet(&PcapPacket::new(ts, packet.len, data))
                .map_err(|e| pcap_err(op, e))?,
            Inner::PcapNg(w) => w
                .write_pcapng_block(EnhancedPacketBlock {
                    interface_id: 0,
                    timestamp: ts,
                    original_len: packet.len,
                    data: Cow::Borrowed(data),
                    options: vec![],
                })
                .map_err(|e| pcap_err(op, e))?,
        };
        self.written += 1;
        Ok(())
    }

    /// Packets written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Flushes and returns the underlying writer.
    pub fn into_inner(self) -> W {
        match self.inner {
            Inner::Pcap(w) => w.into_writer(),
            Inner::PcapNg(w) => w.into_inner(),
        }
    }
}

//! The pin protocol (`lwtun::pins`), the same for every pinned family: load with a folder →
//! every state map and program pinned → a second owner refused, in this process and in another,
//! naming the owner → kept pins adopted by a fresh process (the same maps, its own programs)
//! → a failed load (another program's map, another lwtun version's layout) leaves the folder as
//! it was → the last owner drops and leaves nothing.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};

use libbpf_rs::MapCore;
use lwtun::decap::Decap;
use lwtun::lwt_redirect::LwtRedirect;
use lwtun::pins::{self, PinLayout};
use lwtun::probe::Feature;
use lwtun::seg6::Seg6Tag;
use lwtun::tunnel::Tunnel;
use lwtun::tunnel_redirect::TunnelRedirect;
use lwtun::{ErrorKind, Result};

/// The environment variable that makes [`child_owner`] act: `FAMILY FOLDER`.
const CHILD: &str = "LWTUN_PIN_PROTOCOL_CHILD";

/// A loaded family that owns a pin folder, as the protocol sees it.
trait Owner {
    fn keep(&mut self);
}

impl Owner for Tunnel {
    fn keep(&mut self) {
        self.keep_pinned();
    }
}
impl Owner for Decap {
    fn keep(&mut self) {
        self.keep_pinned();
    }
}
impl Owner for LwtRedirect {
    fn keep(&mut self) {
        self.keep_pinned();
    }
}
impl Owner for TunnelRedirect {
    fn keep(&mut self) {
        self.keep_pinned();
    }
}
impl Owner for Seg6Tag {
    fn keep(&mut self) {
        self.keep_pinned();
    }
}

/// Loads family `name` with its pins in `folder`.
fn load(name: &str, folder: &Path) -> Result<Box<dyn Owner>> {
    Ok(match name {
        "tunnel" => Box::new(Tunnel::builder().pin(folder).load()?),
        "decap" => Box::new(Decap::load_pinned(folder)?),
        "lwt_redirect" => Box::new(LwtRedirect::builder().pin(folder).load()?),
        "tunnel_redirect" => Box::new(TunnelRedirect::builder().pin(folder).load()?),
        "seg6" => Box::new(Seg6Tag::builder().pin(folder).load()?),
        other => panic!("no family {other}"),
    })
}

/// The families and what their test needs of the kernel.
fn families() -> Vec<(&'static PinLayout, Option<Feature>)> {
    vec![
        (&lwtun::tunnel::PIN_LAYOUT, None),
        (&lwtun::decap::PIN_LAYOUT, None),
        (&lwtun::lwt_redirect::PIN_LAYOUT, None),
        (&lwtun::tunnel_redirect::PIN_LAYOUT, None),
        (&lwtun::seg6::PIN_LAYOUT, Some(Feature::Seg6Local)),
    ]
}

/// The id of every pinned state map, and of every pinned program, in `folder`.
fn pinned_ids(layout: &PinLayout, folder: &Path) -> (Vec<u32>, Vec<(String, u32)>) {
    let maps = layout
        .maps()
        .iter()
        .map(|m| {
            let h = libbpf_rs::MapHandle::from_pinned_path(folder.join(m))
                .unwrap_or_else(|e| panic!("{} map {m} not pinned: {e}", layout.family()));
            h.info().unwrap().info.id
        })
        .collect();
    let programs = layout
        .programs()
        .iter()
        .filter(|p| folder.join(p).exists())
        .map(|p| (p.to_string(), program_id(&folder.join(p))))
        .collect();
    (maps, programs)
}

/// The id of the program pinned at `path`, from bpftool.
fn program_id(path: &Path) -> u32 {
    let out = Command::new("bpftool")
        .args(["-j", "prog", "show", "pinned"])
        .arg(path)
        .output()
        .expect("bpftool");
    assert!(out.status.success(), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["id"].as_u64().unwrap() as u32
}

/// Everything in `folder`, sorted.
fn entries(folder: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(folder)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Not a test of its own: the second process of the `*_follows_the_pin_protocol` tests, which
/// run it with `--ignored` and `LWTUN_PIN_PROTOCOL_CHILD=FAMILY FOLDER`. It adopts the folder,
/// says `OWNED PID` on stdout, waits for a line on stdin, keeps the pins and exits.
#[test]
#[ignore = "the second process of the *_follows_the_pin_protocol tests"]
fn child_owner() {
    let spec = std::env::var(CHILD).expect("run by a *_follows_the_pin_protocol test");
    let (family, folder) = spec.split_once(' ').unwrap();
    let mut owner = load(family, Path::new(folder)).unwrap();
    let mut out = std::io::stdout();
    writeln!(out, "OWNED {}", std::process::id()).unwrap();
    out.flush().unwrap();
    let mut line = String::new();
    std::io::stdin().read_line(&mut line).unwrap();
    owner.keep();
}

/// The protocol, step by step, for the family of `layout` (see the file's docs).
fn follows_the_pin_protocol(test: &str, layout: &'static PinLayout, needs: Option<Feature>) {
    if !common::privileged(test) {
        return;
    }
    if needs.is_some_and(|f| !common::kernel_has(test, f)) {
        return;
    }
    let me = std::process::id();
    let family = layout.family();
    {
        let dir = common::PinDir::new(family);
        let folder = dir.0.as_path();

        // Load: every state map is pinned; the folder is this family's, complete, owned by us.
        let mut first = load(family, folder).unwrap();
        let (maps, programs) = pinned_ids(layout, folder);
        assert!(
            layout.programs().is_empty() || !programs.is_empty(),
            "{family}: no program pinned"
        );
        let seen = pins::inspect(folder).unwrap().expect("a pin folder");
        assert_eq!(seen.layout, layout, "{family}: inspect names the family");
        assert!(seen.complete, "{family}");
        assert_eq!(seen.owner.map(|o| o.pid), Some(me), "{family}: owner");

        // A second owner in this process is refused, naming us, and changes nothing.
        let before = entries(folder);
        let e = load(family, folder).err().expect("a second owner");
        assert_eq!(e.kind(), ErrorKind::Exists, "{family}: {e}");
        assert!(
            e.to_string().contains(&format!("process {me}")),
            "{family}: {e}"
        );
        assert_eq!(entries(folder), before, "{family}");

        // Kept: the pins stay, nobody owns them.
        first.keep();
        drop(first);
        assert_eq!(entries(folder), before, "{family}: kept pins");
        assert_eq!(pins::owner(folder).unwrap(), None, "{family}");

        // A fresh process adopts them: the same maps, its own programs; while it lives, our
        // load is refused naming it.
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "child_owner", "--ignored", "--nocapture"])
            .env(CHILD, format!("{family} {}", folder.display()))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let pid = loop {
            let line = lines
                .next()
                .unwrap_or_else(|| panic!("{family}: the child ended before owning"))
                .unwrap();
            if let Some(pid) = line.strip_prefix("OWNED ") {
                break pid.parse::<u32>().unwrap();
            }
        };
        assert_eq!(
            pins::owner(folder).unwrap().map(|o| o.pid),
            Some(pid),
            "{family}"
        );
        let e = load(family, folder)
            .err()
            .expect("refused while the child owns it");
        assert_eq!(e.kind(), ErrorKind::Exists, "{family}: {e}");
        assert!(
            e.to_string().contains(&format!("process {pid}")),
            "{family}: {e}"
        );
        let (adopted_maps, adopted_programs) = pinned_ids(layout, folder);
        assert_eq!(
            adopted_maps, maps,
            "{family}: the child adopted the same maps"
        );
        for ((name, old), (_, new)) in programs.iter().zip(&adopted_programs) {
            assert_ne!(old, new, "{family}: {name} is the adopter's own program");
        }
        writeln!(child.stdin.as_mut().unwrap()).unwrap();
        let status = child.wait().unwrap();
        for _ in lines.by_ref() {}
        assert!(status.success(), "{family}: child {status}");
        assert_eq!(
            pins::owner(folder).unwrap(),
            None,
            "{family}: the child's lock went with it"
        );
        assert_eq!(
            pinned_ids(layout, folder).0,
            maps,
            "{family}: kept by the child"
        );

        // A load that fails (another ABI version, here: a config map replaced by another
        // program's map of the same name) leaves the folder as it found it.
        let after_child = entries(folder);
        let e = {
            let stray = folder.join(layout.maps()[0]);
            std::fs::rename(&stray, folder.join("stray")).unwrap();
            let m = lwtun::xdp::DevMap::create(lwtun::xdp::DevMapKind::Hash, 4).unwrap();
            let out = Command::new("bpftool")
                .args(["map", "pin", "name", "lwtun_devmap"])
                .arg(&stray)
                .output()
                .unwrap();
            assert!(out.status.success(), "{out:?}");
            drop(m);
            let e = load(family, folder)
                .err()
                .expect("another program's map refused");
            std::fs::remove_file(&stray).unwrap();
            std::fs::rename(folder.join("stray"), &stray).unwrap();
            e
        };
        assert_eq!(e.kind(), ErrorKind::InvalidInput, "{family}: {e}");
        assert!(
            e.to_string().contains("another program's pins"),
            "{family}: {e}"
        );
        assert_eq!(
            entries(folder),
            after_child,
            "{family}: a refused load touched nothing"
        );

        // Another lwtun version's layout (the last state map with the same name but other
        // key and value sizes) is refused by the kit's ABI check, and nothing is touched.
        let e = {
            let name = *layout.maps().last().unwrap();
            let path = folder.join(name);
            std::fs::rename(&path, folder.join("stray")).unwrap();
            let out = Command::new("bpftool")
                .args(["map", "create"])
                .arg(&path)
                .args([
                    "type", "hash", "key", "3", "value", "5", "entries", "1", "name",
                ])
                .arg(name)
                .output()
                .unwrap();
            assert!(out.status.success(), "{family}: {out:?}");
            let e = load(family, folder)
                .err()
                .expect("another version's layout refused");
            std::fs::remove_file(&path).unwrap();
            std::fs::rename(folder.join("stray"), &path).unwrap();
            e
        };
        assert_eq!(e.kind(), ErrorKind::InvalidInput, "{family}: {e}");
        let message = e.to_string();
        for part in ["3-byte keys", "5-byte values", "another lwtun version"] {
            assert!(message.contains(part), "{family}: {message}");
        }
        assert_eq!(
            entries(folder),
            after_child,
            "{family}: a refused adoption touched nothing"
        );

        // The last owner adopts and drops without keeping: nothing is left, not the folder.
        let last = load(family, folder).unwrap();
        assert_eq!(
            pinned_ids(layout, folder).0,
            maps,
            "{family}: adopted once more"
        );
        drop(last);
        assert!(!folder.exists(), "{family}: left {:?}", entries(folder));
    }
}

#[test]
fn tunnel_follows_the_pin_protocol() {
    follows_the_pin_protocol(
        "tunnel_follows_the_pin_protocol",
        &lwtun::tunnel::PIN_LAYOUT,
        None,
    );
}

#[test]
fn decap_follows_the_pin_protocol() {
    follows_the_pin_protocol(
        "decap_follows_the_pin_protocol",
        &lwtun::decap::PIN_LAYOUT,
        None,
    );
}

#[test]
fn lwt_redirect_follows_the_pin_protocol() {
    follows_the_pin_protocol(
        "lwt_redirect_follows_the_pin_protocol",
        &lwtun::lwt_redirect::PIN_LAYOUT,
        None,
    );
}

#[test]
fn tunnel_redirect_follows_the_pin_protocol() {
    follows_the_pin_protocol(
        "tunnel_redirect_follows_the_pin_protocol",
        &lwtun::tunnel_redirect::PIN_LAYOUT,
        None,
    );
}

#[test]
fn seg6_follows_the_pin_protocol() {
    follows_the_pin_protocol(
        "seg6_follows_the_pin_protocol",
        &lwtun::seg6::PIN_LAYOUT,
        Some(Feature::Seg6Local),
    );
}

#[test]
fn an_incomplete_set_is_cleared_and_a_fresh_one_pinned() {
    require!();
    let dir = common::PinDir::new("incomplete");
    let folder = dir.0.as_path();
    let mut t = Tunnel::builder().pin(folder).load().unwrap();
    t.keep_pinned();
    drop(t);
    let layout = &lwtun::tunnel::PIN_LAYOUT;
    let (maps, _) = pinned_ids(layout, folder);
    // What a load or unload killed midway leaves: part of the set.
    std::fs::remove_file(folder.join(layout.maps()[1])).unwrap();
    let seen = pins::inspect(folder).unwrap().unwrap();
    assert!(!seen.complete);
    let t = Tunnel::builder().pin(folder).load().unwrap();
    assert!(!t.adopted(), "part of a set is not adopted");
    let (fresh, _) = pinned_ids(layout, folder);
    for (old, new) in maps.iter().zip(&fresh) {
        assert_ne!(old, new, "every map is new");
    }
    drop(t);
    assert!(!folder.exists());
}

#[test]
fn discover_finds_every_family_folder_under_a_root() {
    require!();
    let root = common::PinDir::new("discover");
    std::fs::create_dir_all(&root.0).unwrap();
    let mut owners = Vec::new();
    for (layout, needs) in families() {
        if needs.is_some_and(|f| f.check().is_err()) {
            continue;
        }
        let folder = root.0.join("nested").join(layout.family());
        owners.push((
            layout,
            folder.clone(),
            load(layout.family(), &folder).unwrap(),
        ));
    }
    let found = pins::discover(&root.0).unwrap();
    let me = std::process::id();
    assert_eq!(found.len(), owners.len(), "{found:?}");
    for (layout, folder, _) in &owners {
        let f = found
            .iter()
            .find(|f| &f.path == folder)
            .unwrap_or_else(|| panic!("{} not found: {found:?}", folder.display()));
        assert_eq!(f.layout, *layout, "{}", folder.display());
        assert!(f.complete);
        assert_eq!(f.owner.as_ref().map(|o| o.pid), Some(me));
    }
    drop(owners);
    assert!(pins::discover(&root.0).unwrap().is_empty());
    // A folder that does not exist is an error naming it; one without pins holds none.
    let e = pins::discover(root.0.join("missing")).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
    assert!(pins::inspect(&root.0).unwrap().is_none());
}

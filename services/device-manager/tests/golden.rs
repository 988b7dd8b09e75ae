//! Golden files: each `testdata/golden/<case>/` holds a config (`config.toml`
//! or `conf.yaml`), a described device tree (`tree.txt`) and the expected
//! listing (`expected.txt`). `SMARTER_UPDATE_GOLDEN=1` rewrites the latter.
//!
//! `tree.txt` lines: `c MAJ:MIN path` (char node), `b MAJ:MIN path`,
//! `d path` (directory), `l path target` (symlink), `gpu N` (Jetson
//! `gpu.N`), `prop MAJ:MIN KEY=value` (udev property).

use std::collections::BTreeMap;
use std::path::Path;

use smarter_device_manager::config;
use smarter_device_manager::discover::{self, Inventory, Kind, StaticInfo};
use smarter_device_manager::rules;

type R = Result<(), Box<dyn std::error::Error>>;

fn rdev(s: &str) -> Result<u64, Box<dyn std::error::Error>> {
    let (ma, mi) = s.split_once(':').ok_or("MAJ:MIN expected")?;
    let (ma, mi): (u64, u64) = (ma.parse()?, mi.parse()?);
    Ok(((ma & 0xfff) << 8) | (mi & 0xff) | ((mi & !0xff) << 12) | ((ma & !0xfff) << 32))
}

fn parse_tree(text: &str) -> Result<(Inventory, StaticInfo), Box<dyn std::error::Error>> {
    let mut inv = Inventory::default();
    let mut info = StaticInfo::default();
    let mut links = Vec::new();
    for line in text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let f: Vec<&str> = line.split_whitespace().collect();
        match f.as_slice() {
            ["c", n, p] => inv = inv.with(p, Kind::Char, rdev(n)?, None),
            ["b", n, p] => inv = inv.with(p, Kind::Block, rdev(n)?, None),
            ["d", p] => inv = inv.with(p, Kind::Dir, 0, None),
            ["l", p, t] => links.push((p.to_string(), t.to_string())),
            ["gpu", n] => inv.jetson_gpus.push(n.to_string()),
            ["prop", n, kv] => {
                let (k, v) = kv.split_once('=').ok_or("KEY=value expected")?;
                info.0
                    .entry(rdev(n)?)
                    .or_insert_with(BTreeMap::new)
                    .insert(k.to_string(), v.to_string());
            }
            _ => return Err(format!("bad tree line {line:?}").into()),
        }
    }
    for (p, t) in links {
        let target = inv
            .entries
            .get(&t)
            .ok_or(format!("link target {t} missing"))?
            .clone();
        inv = inv.with(&p, target.kind, target.rdev, Some(&t));
    }
    Ok((inv, info))
}

#[test]
fn golden_listings() -> R {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/golden");
    let mut cases = 0;
    let mut dirs: Vec<_> = std::fs::read_dir(&root)?
        .flatten()
        .map(|e| e.path())
        .collect();
    dirs.sort();
    for dir in dirs {
        let cfg_path = ["config.toml", "conf.yaml"]
            .iter()
            .map(|f| dir.join(f))
            .find(|p| p.exists())
            .ok_or(format!("{}: no config", dir.display()))?;
        let cfg = config::load(&cfg_path)?;
        let rules = rules::compile(&cfg.effective_rules(), "rules").map_err(|e| e.to_string())?;
        let (inv, info) = parse_tree(&std::fs::read_to_string(dir.join("tree.txt"))?)?;
        let got = discover::render(&discover::discover(&rules, &inv, &info, Path::new("/dev")));
        let expected_path = dir.join("expected.txt");
        if std::env::var_os("SMARTER_UPDATE_GOLDEN").is_some() {
            std::fs::write(&expected_path, &got)?;
        }
        let want = std::fs::read_to_string(&expected_path).unwrap_or_default();
        assert_eq!(got, want, "golden mismatch in {}", dir.display());
        cases += 1;
    }
    assert!(cases >= 3, "only {cases} golden cases found");
    Ok(())
}

//! The fuzz targets' properties (fuzz/checks.rs) over generated inputs, in every `cargo test`:
//! valid samples of each input, mutated and spliced, and random bytes, from a fixed seed so a
//! failure repeats. Coverage-guided hunts stay with cargo-fuzz (`scripts/fuzz.sh 3600`); this
//! keeps the properties checked without it. `FERRO_FUZZ_ITERS` and `FERRO_FUZZ_SEED` change
//! the amount and the seed.

#[path = "../../../fuzz/checks.rs"]
mod checks;

/// xorshift64*: enough to spread the mutations, and the same on every machine.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

/// Bytes that matter to the parsers: separators, quotes, escapes, digits, a path.
const ALPHABET: &[u8] = b"=,;:/\\-_. \n\t\"{}[]0123456789abcdefxyzABCDEF\x00\xff\xc3";

/// Fragments of real inputs, spliced in whole.
const TOKENS: &[&str] = &[
    "clusterID",
    "pool",
    "imageFeatures",
    "layering,exclusive-lock,object-map,fast-diff,deep-flatten",
    "mounter",
    "rbd-nbd",
    "mapOptions",
    "krbd:",
    "nbd:",
    "try-netlink",
    "lock_on_read",
    "ms_mode=secure",
    "csi.storage.k8s.io/fstype",
    "xfs",
    "ext4",
    "-m 0",
    "-E lazy_itable_init=1",
    "0001-0024-",
    "-0000000000000001-",
    "\"monitors\":",
    "\"state\":\"staged\"",
    "null",
    "true",
    "18446744073709551616",
    "-1",
    "../",
    "/dev/",
    "\\u0000",
];

fn mutate(rng: &mut Rng, seeds: &[&[u8]]) -> Vec<u8> {
    let mut v = match rng.below(8) {
        0 => (0..rng.below(64)).map(|_| rng.next() as u8).collect(),
        1 => Vec::new(),
        _ => seeds[rng.below(seeds.len())].to_vec(),
    };
    for _ in 0..=rng.below(6) {
        let at = rng.below(v.len() + 1);
        match rng.below(7) {
            0 => v.insert(at, ALPHABET[rng.below(ALPHABET.len())]),
            1 if at < v.len() => v[at] = ALPHABET[rng.below(ALPHABET.len())],
            2 if at < v.len() => {
                let end = (at + 1 + rng.below(8)).min(v.len());
                v.drain(at..end);
            }
            3 => {
                let t = TOKENS[rng.below(TOKENS.len())].as_bytes();
                v.splice(at..at, t.iter().copied());
            }
            4 => v.truncate(at),
            5 => {
                let other = seeds[rng.below(seeds.len())];
                let from = rng.below(other.len() + 1);
                v.splice(at..at, other[from..].iter().copied());
            }
            _ if at < v.len() => v[at] = rng.next() as u8,
            _ => {}
        }
    }
    v
}

fn run(name: &str, seeds: &[&[u8]], check: fn(&[u8])) {
    let iters: usize = std::env::var("FERRO_FUZZ_ITERS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20_000);
    let seed: u64 = std::env::var("FERRO_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_f00d_cafe_d00d);
    for s in seeds {
        check(s);
    }
    let mut rng = Rng(seed ^ name.len() as u64 ^ 1);
    for i in 0..iters {
        let input = mutate(&mut rng, seeds);
        let r = std::panic::catch_unwind(|| check(&input));
        assert!(
            r.is_ok(),
            "{name}: input {i} (FERRO_FUZZ_SEED={seed}) broke the property: {:?}",
            String::from_utf8_lossy(&input)
        );
    }
}

const VOLUME_ID: &str =
    "0001-0024-ec400639-1379-4bb3-8921-858f4e7c394d-0000000000000001-e525a81b-154d-469a-af6f-c754119217dc";

#[test]
fn volume_id_codec() {
    assert!(ferroceph::volid::CsiId::decode(VOLUME_ID).is_ok());
    run("volume_id", &[VOLUME_ID.as_bytes()], checks::volume_id);
}

#[test]
fn rbd_params() {
    let seeds: &[&[u8]] = &[
        b"clusterID=c1\npool=rbd\nimageFeatures=layering,exclusive-lock\ncsi.storage.k8s.io/fstype=xfs",
        b"clusterID=c1\npool=rbd\nmounter=rbd-nbd\nmapOptions=krbd:lock_on_read;nbd:try-netlink\nthickProvision=true",
        b"monitors=10.0.0.1:6789,10.0.0.2:6789\npool=kube\nadminId=admin\nuserId=kube\nimageFormat=2",
    ];
    run("rbd_params", seeds, checks::rbd_params);
}

#[test]
fn cluster_map() {
    let map = br#"[{"clusterID":"c1","monitors":["127.0.0.1:6789","[::1]:3300"],"rbd":{"radosNamespace":"ns"},"cephFS":{"subvolumeGroup":"csi","kernelMountOptions":"ms_mode=secure"},"readAffinity":{"enabled":false}}]"#;
    let text = std::str::from_utf8(map).expect("utf-8");
    assert!(ferroceph::config::parse(text).is_ok());
    run("cluster_map", &[map, b"[]"], checks::cluster_map);
}

#[test]
fn staging_record() {
    let record = br#"{"version":1,"volume_id":"v1","staging_path":"/var/lib/kubelet/plugins/kubernetes.io/csi/x/globalmount","state":"staged","requested_mounter":"auto","mounter":"krbd","reason":"rbd module loaded","image":{"cluster_id":"c1","monitors":["127.0.0.1:6789"],"pool":"rbd","namespace":"","image":"csi-vol-1","user":"csi-rbd"},"device":"/dev/rbd0","fuse":{"pid":42,"start_time":7,"dir":"/run/f","file":"/run/f/img","client_id":9},"nbd_pid":null,"read_only":false,"block":false,"fs_type":"ext4","mount_options":["discard"],"format_started":false,"updated":1}"#;
    assert!(
        serde_json::from_slice::<ferroceph::node::record::Record>(record).is_ok(),
        "the sample staging record no longer parses: update it to the current format"
    );
    run("staging_record", &[record], checks::staging_record);
}

#[test]
fn node_options() {
    let seeds: &[&[u8]] = &[
        b"-m 0 -E lazy_itable_init=1,nodiscard",
        b"-K -i size=512",
        b"lock_on_read,queue_depth=128",
        b"ms_mode=secure,noatime",
        b"try-netlink,reattach-timeout=300",
    ];
    run("node_options", seeds, checks::node_options);
}

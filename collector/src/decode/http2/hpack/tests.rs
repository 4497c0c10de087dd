use super::*;

fn hex(s: &str) -> Vec<u8> {
    let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("test hex"))
        .collect()
}

fn decode(d: &mut Decoder, block: &[u8]) -> (Result<Block, HpackError>, Vec<(String, String)>) {
    let mut fields = Vec::new();
    let r = d.decode(block, &mut |n, v| {
        fields.push((
            String::from_utf8_lossy(n).into_owned(),
            String::from_utf8_lossy(v).into_owned(),
        ))
    });
    (r, fields)
}

fn pairs(p: &[(&str, &str)]) -> Vec<(String, String)> {
    p.iter()
        .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
        .collect()
}

/// RFC 7541 C.3 (plain literals) and C.4 (Huffman): three requests on one connection, the
/// dynamic table carried from one to the next.
#[test]
fn rfc_7541_request_examples_with_and_without_huffman() {
    for blocks in [
        [
            "828684410f7777772e6578616d706c652e636f6d",
            "828684be58086e6f2d6361636865",
            "828785bf400a637573746f6d2d6b65790c637573746f6d2d76616c7565",
        ],
        [
            "828684418cf1e3c2e5f23a6ba0ab90f4ff",
            "828684be5886a8eb10649cbf",
            "828785bf408825a849e95ba97d7f8925a849e95bb8e8b4bf",
        ],
    ] {
        let mut d = Decoder::default();
        let base = [
            (":method", "GET"),
            (":scheme", "http"),
            (":path", "/"),
            (":authority", "www.example.com"),
        ];
        let (r, f) = decode(&mut d, &hex(blocks[0]));
        assert_eq!(r, Ok(Block::default()));
        assert_eq!(f, pairs(&base));
        assert_eq!(d.size, 57, "one entry: :authority www.example.com");
        let (r, f) = decode(&mut d, &hex(blocks[1]));
        assert_eq!(r, Ok(Block::default()));
        let mut want = pairs(&base);
        want.push(("cache-control".into(), "no-cache".into()));
        assert_eq!(f, want);
        assert_eq!(d.size, 110);
        let (r, f) = decode(&mut d, &hex(blocks[2]));
        assert_eq!(r, Ok(Block::default()));
        assert_eq!(
            f,
            pairs(&[
                (":method", "GET"),
                (":scheme", "https"),
                (":path", "/index.html"),
                (":authority", "www.example.com"),
                ("custom-key", "custom-value"),
            ])
        );
        assert_eq!(d.size, 164);
        assert!(d.is_in_step());
    }
}

/// RFC 7541 C.5: responses with a 256-byte table, so that entries are evicted.
#[test]
fn rfc_7541_responses_evict_from_a_small_table() {
    let mut d = Decoder::default();
    // Size update to 256 first (the example's SETTINGS_HEADER_TABLE_SIZE).
    let (r, _) = decode(&mut d, &hex("3fe101"));
    assert_eq!(r, Ok(Block::default()));
    assert_eq!(d.max_size, 256);
    let first = hex(
        "4803333032580770726976617465611d4d6f6e2c203231204f637420323031332032303a31333a323120474d546e1768747470733a2f2f7777772e6578616d706c652e636f6d",
    );
    let (r, f) = decode(&mut d, &first);
    assert_eq!(r, Ok(Block::default()));
    assert_eq!(f[0], (":status".to_owned(), "302".to_owned()));
    assert_eq!(d.size, 222);
    let (r, f) = decode(&mut d, &hex("4803333037c1c0bf"));
    assert_eq!(r, Ok(Block::default()));
    assert_eq!(f[0], (":status".to_owned(), "307".to_owned()));
    assert_eq!(
        f[3],
        ("location".to_owned(), "https://www.example.com".to_owned())
    );
    assert_eq!(d.size, 222, ":status 302 evicted for :status 307");
}

#[test]
fn out_of_step_leaves_dynamic_references_unknown_and_a_size_update_to_zero_resyncs() {
    let mut d = Decoder::default();
    decode(&mut d, &hex("828684410f7777772e6578616d706c652e636f6d"))
        .0
        .expect("first block");
    d.lose_step();
    assert!(!d.is_in_step());
    let (r, f) = decode(&mut d, &hex("828684be58086e6f2d6361636865"));
    assert_eq!(
        r,
        Ok(Block { unknown: 1 }),
        ":authority was a dynamic entry"
    );
    assert_eq!(
        f,
        pairs(&[
            (":method", "GET"),
            (":scheme", "http"),
            (":path", "/"),
            ("cache-control", "no-cache"),
        ]),
        "static references and literals are still right; nothing guessed"
    );
    // A size update to 0 then 4096: both tables empty, in step again.
    let (r, f) = decode(&mut d, &hex("203fe11f 82 40 01 61 01 62 be"));
    assert_eq!(r, Ok(Block::default()));
    assert!(d.is_in_step());
    assert_eq!(f, pairs(&[(":method", "GET"), ("a", "b"), ("a", "b")]));
}

#[test]
fn hostile_blocks_fail_cleanly_and_leave_the_decoder_out_of_step() {
    let cases: &[(&str, HpackError)] = &[
        // A table size update far beyond the cap.
        ("3fe1ff07", HpackError::TableSizeTooLarge),
        // An integer that never ends / overflows.
        ("3fffffffffffffffff7f", HpackError::IntegerOverflow),
        ("ffffffffffffffff", HpackError::IntegerOverflow),
        // Index 0 and an index past both tables.
        ("80", HpackError::BadIndex),
        ("be", HpackError::BadIndex),
        // A size update after a field.
        ("8220", HpackError::MisplacedSizeUpdate),
        // A literal whose length runs past the block.
        ("400a6162", HpackError::Truncated),
        // A Huffman string with bad padding.
        ("4081004081ff", HpackError::Huffman),
    ];
    for (block, want) in cases {
        let mut d = Decoder::default();
        let (r, _) = decode(&mut d, &hex(block));
        assert_eq!(r, Err(*want), "block {block}");
        assert!(!d.is_in_step(), "block {block}: a failed block desyncs");
    }
    // A header list beyond the cap: many 1 KiB literals.
    let mut block = Vec::new();
    let value = vec![b'x'; 1000];
    for _ in 0..80 {
        block.extend_from_slice(&[0x00, 0x01, b'k', 0x7f, 0xe9, 0x06]); // 127 + 873 = 1000
        block.extend_from_slice(&value);
    }
    let mut d = Decoder::default();
    let (r, f) = decode(&mut d, &block);
    assert_eq!(r, Err(HpackError::HeaderListTooLarge));
    assert!(f.len() < 80, "stops at the cap, saw {}", f.len());
}

/// Seeded garbage and every cut of real blocks: never a panic, the table never past its cap.
#[test]
fn garbage_and_cut_blocks_never_panic() {
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut d = Decoder::default();
    for _ in 0..20_000 {
        let len = (next() % 64) as usize;
        let block: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        let _ = decode(&mut d, &block);
        assert!(d.size <= MAX_TABLE_SIZE && d.size <= d.max_size);
    }
    let real = hex("828785bf408825a849e95ba97d7f8925a849e95bb8e8b4bf");
    for cut in 0..real.len() {
        let mut d = Decoder::default();
        let _ = decode(&mut d, &hex("828684418cf1e3c2e5f23a6ba0ab90f4ff"));
        let _ = decode(&mut d, &real[..cut]);
    }
}

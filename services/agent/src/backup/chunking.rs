//! Cutting a file into content-defined chunks: the parameters, the
//! chunker, and the reading of one file's chunks.

/// How the reader cuts and compresses.
#[derive(Debug, Clone, Copy)]
pub struct ChunkParams {
    /// Smallest chunk.
    pub min: usize,
    /// Average chunk.
    pub avg: usize,
    /// Largest chunk.
    pub max: usize,
    /// zstd level.
    pub level: i32,
}

/// The content-defined chunker (FastCDC 2020, normalization level 1) the
/// agent cuts files with.
pub fn chunker<R: std::io::Read>(source: R, p: &ChunkParams) -> fastcdc::v2020::StreamCDC<R> {
    fastcdc::v2020::StreamCDC::new(source, p.min, p.avg, p.max)
}

/// The chunks of a file. One that fits in a largest chunk is read whole
/// and cut in memory: the streaming chunker allocates (and zeroes) a
/// buffer of the largest chunk's size for every file, which dominated the
/// backup of many small files. Larger files are cut by the streaming
/// chunker. Both cut the same bytes at the same places.
pub(super) fn file_chunks<'f>(
    file: &'f std::fs::File,
    size_hint: u64,
    p: &ChunkParams,
) -> std::io::Result<Box<dyn Iterator<Item = std::io::Result<Vec<u8>>> + 'f>> {
    use std::io::Read;
    let mut head = Vec::with_capacity((size_hint as usize).min(p.max) + 1);
    file.take(p.max as u64 + 1).read_to_end(&mut head)?;
    if head.len() > p.max {
        let stream = std::io::Cursor::new(head).chain(file);
        return Ok(Box::new(
            chunker(stream, p).map(|c| c.map(|c| c.data).map_err(std::io::Error::other)),
        ));
    }
    let cuts: Vec<(usize, usize)> = fastcdc::v2020::FastCDC::new(&head, p.min, p.avg, p.max)
        .map(|c| (c.offset, c.length))
        .collect();
    if cuts.len() <= 1 {
        return Ok(Box::new((!head.is_empty()).then_some(Ok(head)).into_iter()));
    }
    let pieces: Vec<std::io::Result<Vec<u8>>> = cuts
        .into_iter()
        .map(|(o, l)| Ok(head[o..o + l].to_vec()))
        .collect();
    Ok(Box::new(pieces.into_iter()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn data(seed: u64, len: usize) -> Vec<u8> {
        let mut x = seed | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect()
    }

    fn cuts(bytes: &[u8], p: &ChunkParams) -> Vec<(u64, usize)> {
        chunker(bytes, p)
            .map(|c| c.unwrap())
            .map(|c| (c.offset, c.length))
            .collect()
    }

    const SMALL: ChunkParams = ChunkParams {
        min: 2048,
        avg: 8192,
        max: 32768,
        level: 1,
    };

    proptest! {
        #![proptest_config(ProptestConfig {
            cases: 48,
            failure_persistence: None,
            rng_seed: proptest::test_runner::RngSeed::Fixed(0x00A2_CA00),
            ..ProptestConfig::default()
        })]

        /// Bytes inserted early in a file move the boundaries near the
        /// insertion only: every chunk from a little after it is cut again
        /// exactly (so it deduplicates).
        #[test]
        fn boundaries_are_stable_under_early_insertions(
            seed in any::<u64>(),
            at in 0usize..100_000,
            inserted in proptest::collection::vec(any::<u8>(), 1..200),
        ) {
            let original = data(seed, 1_000_000);
            let mut edited = original.clone();
            edited.splice(at..at, inserted.iter().copied());
            let shift = inserted.len() as u64;
            let before: Vec<(u64, usize)> = cuts(&original, &SMALL);
            let after: std::collections::HashSet<(u64, usize)> = cuts(&edited, &SMALL).into_iter().collect();
            let horizon = (at + 4 * SMALL.max) as u64;
            let later: Vec<_> = before.iter().filter(|(o, _)| *o >= horizon).collect();
            let kept = later.iter().filter(|(o, l)| after.contains(&(o + shift, *l))).count();
            prop_assert!(later.len() > 50);
            prop_assert!(kept * 100 >= later.len() * 99, "only {kept} of {} later chunks kept", later.len());
        }
    }

    #[test]
    fn files_read_whole_are_cut_where_the_stream_cuts_them() {
        let dir = tempfile::tempdir().unwrap();
        for (i, len) in [0usize, 1, 2047, 2048, 9000, 32767, 32768, 32769, 100_000]
            .into_iter()
            .enumerate()
        {
            let bytes = data(i as u64 + 7, len);
            let path = dir.path().join(format!("f{i}"));
            std::fs::write(&path, &bytes).unwrap();
            let file = std::fs::File::open(&path).unwrap();
            let got: Vec<Vec<u8>> = file_chunks(&file, len as u64, &SMALL)
                .unwrap()
                .map(|c| c.unwrap())
                .collect();
            let want: Vec<Vec<u8>> = chunker(&bytes[..], &SMALL)
                .map(|c| c.unwrap().data)
                .collect();
            assert_eq!(got, want, "length {len}");
        }
    }

    #[test]
    fn pinned_boundaries_for_a_seeded_input_with_the_default_sizes() {
        let params = ChunkParams {
            min: 256 * 1024,
            avg: 1024 * 1024,
            max: 4 * 1024 * 1024,
            level: 3,
        };
        let bytes = data(2026, 12 << 20);
        let lengths: Vec<usize> = cuts(&bytes, &params).into_iter().map(|(_, l)| l).collect();
        assert_eq!(lengths.iter().sum::<usize>(), 12 << 20);
        assert_eq!(
            lengths, PINNED,
            "the chunker's cut points changed: stored data would no longer deduplicate"
        );
    }

    const PINNED: &[usize] = &[
        338436, 1837050, 507316, 324002, 2368207, 2242197, 1548472, 1856164, 526200, 699235, 335633,
    ];
}

//! xz block seeking: any bytes as a data.tar.xz member. The block walker either finds a
//! layout or declines; a layout it finds decodes to the same bytes as liblzma's plain
//! decoder, or fails, never panics or hangs.
#![no_main]

use std::io::Read;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut file = tempfile::tempfile().expect("temp file");
    std::io::Write::write_all(&mut file, data).expect("write input");
    let len = data.len() as u64;
    let Some(blocks) = ddslug::unpack::xzseek::blocks(&file, 0, len) else { return };
    let ours = std::thread::scope(|scope| {
        let mut reader =
            ddslug::unpack::xzseek::BlockReader::new(scope, &file, 0, len, ddslug::unpack::xzseek::Layout::Indexed(blocks), true);
        let mut out = Vec::new();
        // Bounded: a hostile stream may claim huge blocks.
        (&mut reader).take(64 << 20).read_to_end(&mut out).map(|_| out)
    });
    let mut plain = Vec::new();
    let reference = liblzma::read::XzDecoder::new_multi_decoder(data).take(64 << 20).read_to_end(&mut plain).map(|_| plain);
    if let (Ok(ours), Ok(reference)) = (ours, reference) {
        assert!(ours == reference, "block reader and plain decoder disagree ({} vs {} bytes)", ours.len(), reference.len());
    }
});

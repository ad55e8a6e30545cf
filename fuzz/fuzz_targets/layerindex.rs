//! The layer index decoder: any bytes either decode or are refused (`None`); a decoded
//! index answers every query without panicking.
#![no_main]

use ddslug::store::layerindex::LayerIndex;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some(index) = LayerIndex::decode(data.to_vec()) else { return };
    let _ = index.totals();
    for group in &index.groups {
        let _ = index.rel(group);
        for child in index.children(group) {
            let _ = index.name(child);
            let _ = index.target(child);
        }
    }
    let _ = index.paths().count();
});

//! Inputs for tests that hold a rewritten scanner to the code it
//! replaced: every text made of a few pieces.

/// Every concatenation of 0 to `up_to` of `pieces` (repeats allowed), each
/// once, shortest first.
pub(crate) fn sequences(pieces: &[&str], up_to: usize) -> Vec<String> {
    let mut all = vec![String::new()];
    let mut last = vec![String::new()];
    for _ in 0..up_to {
        last = last
            .iter()
            .flat_map(|t| pieces.iter().map(move |p| format!("{t}{p}")))
            .collect();
        all.extend(last.iter().cloned());
    }
    all
}

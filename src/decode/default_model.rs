//! The default model that `niclip decode MAP` uses when no model flags are given: the files in
//! the repository's `assets/default/` (built by `scripts/build-default-model.sh`), found
//! beside the binary (`target/release/niclip` → `assets/default`), where the crate was built,
//! or at `$NICLIP_ASSETS`.
//!
//! It is CLIP trained on Neurosynth v7 ∪ NeuroQuery (titles and abstracts, all-MiniLM-L6-v2)
//! with image features on the HCPex atlas (426 regions, 2 mm), and the Cognitive Atlas
//! vocabularies (full and reduced) embedded with the same text model.

use super::DecoderAssets;
use crate::error::{Error, Result};
use std::path::{Path, PathBuf};

/// The files every default-model folder holds.
const REQUIRED: [&str; 3] = ["model.safetensors", "atlas.nii.gz", "ontology"];

fn complete(dir: &Path) -> bool {
    REQUIRED.iter().all(|f| dir.join(f).exists())
}

/// The first complete `assets/default` folder: `$NICLIP_ASSETS`, beside the binary (up to
/// three folders up, for `target/<profile>/niclip`), or where the crate was built.
pub fn find() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("NICLIP_ASSETS").map(PathBuf::from) {
        return if complete(&dir) {
            Ok(dir)
        } else {
            Err(Error::input(
                &dir,
                format!(
                    "$NICLIP_ASSETS is not a default-model folder (it needs {}); rebuild one with \
                     scripts/build-default-model.sh or unset it",
                    REQUIRED.join(", ")
                ),
            ))
        };
    }
    let mut candidates = Vec::new();
    if let Ok(exe) = std::env::current_exe() {
        let mut dir = exe.parent().map(Path::to_path_buf);
        for _ in 0..4 {
            let Some(d) = dir else { break };
            candidates.push(d.join("assets/default"));
            dir = d.parent().map(Path::to_path_buf);
        }
    }
    candidates.push(Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/default"));
    candidates.into_iter().find(|d| complete(d)).ok_or_else(|| {
        Error::Usage(
            "the default model (assets/default/ of the niclip repository) was not found beside \
             this binary; run niclip from its repository, set NICLIP_ASSETS=/path/to/assets/default, \
             or pass --model --vocabulary --vocabulary-emb --vocabulary-prior --ontology --atlas"
                .into(),
        )
    })
}

/// The decoder's inputs from the default-model folder: the full Cognitive Atlas vocabulary,
/// or the paper's reduced one.
pub fn assets(dir: &Path, reduced: bool) -> DecoderAssets {
    let vocab = dir.join(if reduced {
        "vocabulary-reduced"
    } else {
        "vocabulary-full"
    });
    DecoderAssets {
        model: dir.join("model.safetensors"),
        vocabulary: vocab.join("vocabulary.txt"),
        vocabulary_emb: vocab.join("vocabulary_emb.npy"),
        vocabulary_prior: vocab.join("vocabulary_prior.npy"),
        ontology: dir.join("ontology"),
        reduced,
        atlas: dir.join("atlas.nii.gz"),
        labels: true,
        cache_atlas: false,
    }
}

//! Stereotactic spaces and the Talairach → MNI conversion NiMARE 0.22.1 applies.

use serde::{Deserialize, Serialize};

/// The space a study's coordinates were reported in. Every coordinate stored in a corpus is MNI
/// mm; this is kept as metadata and decides the conversion on import.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
pub enum Space {
    /// MNI (also ICBM, SPM, FSL templates): used as is.
    #[default]
    #[serde(rename = "MNI")]
    Mni,
    /// Talairach: converted with [`tal2mni`] on import.
    #[serde(rename = "TAL")]
    Tal,
    /// Not known: kept as MNI (as NiMARE does, which only converts spaces named TAL/Talairach).
    #[serde(rename = "UNKNOWN")]
    Unknown,
}

impl Space {
    pub const ALL: [Space; 3] = [Space::Mni, Space::Tal, Space::Unknown];

    pub fn name(self) -> &'static str {
        match self {
            Space::Mni => "MNI",
            Space::Tal => "TAL",
            Space::Unknown => "UNKNOWN",
        }
    }

    pub(crate) fn code(self) -> u8 {
        self as u8
    }

    pub(crate) fn from_code(c: u8) -> Option<Space> {
        Space::ALL.get(c as usize).copied()
    }

    /// Reads a space name as the sources write it: `MNI`, `TAL`, `UNKNOWN` (Neurosynth, pubget),
    /// `Talairach`, NiMARE template names such as `mni152_2mm`, `ale_2mm`. Case does not matter
    /// (NiMARE's Dataset converts only the exact strings `TAL` and `Talairach`; a lower-case
    /// `tal` is converted here too). Empty, `UNKNOWN`, `NA`, `NaN` and `None` are unknown.
    /// Anything else is `None`: the caller reports it as a malformed input.
    pub fn parse(s: &str) -> Option<Space> {
        let l = s.trim().to_ascii_lowercase();
        if l.is_empty()
            || matches!(
                l.as_str(),
                "unknown" | "na" | "n/a" | "nan" | "none" | "null"
            )
        {
            Some(Space::Unknown)
        } else if l == "tal" || l.starts_with("talairach") || l.starts_with("tal_") {
            Some(Space::Tal)
        } else if l.contains("mni") || l.contains("icbm") || l == "ale" || l.starts_with("ale_") {
            Some(Space::Mni)
        } else {
            None
        }
    }
}

impl std::fmt::Display for Space {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// `inv(icbm_other)` exactly as numpy 2 computes it in NiMARE's `tal2mni`, where `icbm_other`
/// is Lancaster's tal2icbm transform for "other" software (BrainMap's `tal2icbm_other.m`):
///
/// ```text
/// [ 0.9357  0.0029 -0.0072 -1.0423]
/// [-0.0065  0.9396 -0.0726 -1.3940]
/// [ 0.0103  0.0752  0.8967  3.6475]
/// [ 0       0       0       1     ]
/// ```
const TAL2MNI: [[f64; 4]; 3] = [
    [
        1.0686001818226878,
        -0.003959206893800996,
        0.008259711038957732,
        1.0781555390892308,
    ],
    [
        0.006402499024408166,
        1.0574069702505609,
        0.08566281257183724,
        1.168243532406646,
    ],
    [
        -0.012811475186137145,
        -0.08863189955596745,
        1.107921357723761,
        -4.178049420864948,
    ],
];

/// The forward matrix `icbm_other` (MNI = inv(icbm_other) · TAL).
pub const ICBM_OTHER: [[f64; 4]; 4] = [
    [0.9357, 0.0029, -0.0072, -1.0423],
    [-0.0065, 0.9396, -0.0726, -1.3940],
    [0.0103, 0.0752, 0.8967, 3.6475],
    [0.0, 0.0, 0.0, 1.0],
];

/// One Talairach coordinate (mm) in MNI mm: NiMARE 0.22.1 `nimare.utils.tal2mni`
/// (Lancaster et al. 2007, the "other software" variant), to ~1e-13 mm.
pub fn tal2mni(p: [f64; 3]) -> [f64; 3] {
    let m = &TAL2MNI;
    let row = |r: &[f64; 4]| r[0] * p[0] + r[1] * p[1] + r[2] * p[2] + r[3];
    [row(&m[0]), row(&m[1]), row(&m[2])]
}

/// Converts coordinates reported in `space` to MNI in place (TAL → [`tal2mni`], others kept).
pub fn to_mni(space: Space, peaks: &mut [[f64; 3]]) {
    if space == Space::Tal {
        for p in peaks {
            *p = tal2mni(*p);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inverse_matches_forward() {
        // TAL2MNI · ICBM_OTHER = I (upper 3 rows).
        for (i, row) in TAL2MNI.iter().enumerate() {
            for j in 0..4 {
                let v: f64 = row.iter().zip(&ICBM_OTHER).map(|(a, m)| a * m[j]).sum();
                let want = if i == j { 1.0 } else { 0.0 };
                assert!((v - want).abs() < 1e-14, "{i},{j}: {v}");
            }
        }
    }

    #[test]
    fn nimare_value() {
        // nimare.utils.tal2mni(np.array([[-38., 34., 20.]]))
        let p = tal2mni([-38.0, 34.0, 20.0]);
        let want = [-39.49807018, 38.59004181, 15.45372921];
        for k in 0..3 {
            assert!((p[k] - want[k]).abs() < 1e-8);
        }
    }

    #[test]
    fn parse_spaces() {
        assert_eq!(Space::parse("MNI"), Some(Space::Mni));
        assert_eq!(Space::parse("mni152_2mm"), Some(Space::Mni));
        assert_eq!(Space::parse("TAL"), Some(Space::Tal));
        assert_eq!(Space::parse("Talairach"), Some(Space::Tal));
        assert_eq!(Space::parse("UNKNOWN"), Some(Space::Unknown));
        assert_eq!(Space::parse(""), Some(Space::Unknown));
        assert_eq!(Space::parse("banana"), None);
    }
}

//! Term features of the corpus texts, as the authors built them for the baselines: counts and
//! TF-IDF of the vocabulary terms among the word 1–2-grams of each text (scikit-learn's
//! `TfidfVectorizer(vocabulary=…, ngram_range=(1, 2), stop_words=NiMARE's Neurosynth list +
//! ["task", "paradigm"])`: lower case, tokens are runs of ≥ 2 word characters, stop words
//! dropped before the n-grams are formed, idf = ln((1 + n) / (1 + df)) + 1, rows scaled to
//! unit l2 norm). A term is reduced to its content words the same way ("Eriksen flanker
//! task" → "eriksen flanker"; "n-back task" → nothing, "back" being a stop word), so a name of more than two content words can never match a bigram;
//! [`Match::Phrase`] counts the whole reduced name instead, at any length.

use std::collections::{HashMap, HashSet};

/// NiMARE 0.22.1's `resources/neurosynth_stoplist.txt`.
const NEUROSYNTH_STOPLIST: &str = include_str!("neurosynth_stoplist.txt");

/// The frequency threshold of NiMARE's decoders: a study has a term when its weight ≥ this.
pub const FREQUENCY_THRESHOLD: f64 = 0.001;

/// How a vocabulary term is found in a text.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Match {
    /// Among the word 1–2-grams (the authors' features; longer names never match).
    #[default]
    Ngram,
    /// The whole reduced name as a contiguous run of content words, at any length.
    Phrase,
}

impl Match {
    pub fn name(self) -> &'static str {
        match self {
            Match::Ngram => "ngram",
            Match::Phrase => "phrase",
        }
    }
}

/// The analyzer: lower-cased tokens of ≥ 2 word characters with the stop words removed.
pub struct Analyzer {
    stop: HashSet<String>,
}

impl Default for Analyzer {
    fn default() -> Self {
        let mut stop: HashSet<String> = NEUROSYNTH_STOPLIST
            .lines()
            .map(|l| l.trim().to_string())
            .filter(|l| !l.is_empty())
            .collect();
        stop.insert("task".into());
        stop.insert("paradigm".into());
        Analyzer { stop }
    }
}

impl Analyzer {
    /// scikit-learn's `(?u)\b\w\w+\b` on the lower-cased text, then the stop list.
    pub fn tokens(&self, text: &str) -> Vec<String> {
        let lower = text.to_lowercase();
        lower
            .split(|c: char| !(c.is_alphanumeric() || c == '_'))
            .filter(|t| t.chars().nth(1).is_some())
            .filter(|t| !self.stop.contains(*t))
            .map(str::to_string)
            .collect()
    }
}

/// The vocabulary as features: each name's reduced form (its content words joined by a space),
/// the distinct forms as columns.
pub struct Vocabulary {
    /// The names as given, in order.
    pub names: Vec<String>,
    /// Column of each name in the feature matrix, `None` when the name has no content word.
    pub column: Vec<Option<usize>>,
    /// The distinct reduced forms, each as its tokens.
    pub keys: Vec<Vec<String>>,
}

impl Vocabulary {
    pub fn new(names: &[String], analyzer: &Analyzer) -> Vocabulary {
        let mut keys: Vec<Vec<String>> = Vec::new();
        let mut at: HashMap<Vec<String>, usize> = HashMap::new();
        let column = names
            .iter()
            .map(|n| {
                let toks = analyzer.tokens(n);
                if toks.is_empty() {
                    return None;
                }
                Some(*at.entry(toks.clone()).or_insert_with(|| {
                    keys.push(toks);
                    keys.len() - 1
                }))
            })
            .collect();
        Vocabulary {
            names: names.to_vec(),
            column,
            keys,
        }
    }
}

/// Counts and TF-IDF weights, documents × distinct terms, dense row-major.
pub struct TermFeatures {
    pub n_docs: usize,
    pub n_terms: usize,
    pub counts: Vec<u32>,
    pub tfidf: Vec<f64>,
}

/// Counts of every vocabulary key in every document, then sklearn's TF-IDF.
pub fn term_features(
    docs: &[String],
    vocab: &Vocabulary,
    analyzer: &Analyzer,
    how: Match,
) -> TermFeatures {
    use rayon::prelude::*;
    let k = vocab.keys.len();
    let index: HashMap<&[String], usize> = vocab
        .keys
        .iter()
        .enumerate()
        .map(|(i, key)| (key.as_slice(), i))
        .collect();
    let longest = vocab.keys.iter().map(Vec::len).max().unwrap_or(0);
    let width = match how {
        Match::Ngram => 2,
        Match::Phrase => longest,
    };
    let counts: Vec<u32> = docs
        .par_iter()
        .flat_map_iter(|d| {
            let toks = analyzer.tokens(d);
            let mut row = vec![0u32; k];
            for i in 0..toks.len() {
                for n in 1..=width.min(toks.len() - i) {
                    if let Some(&c) = index.get(&toks[i..i + n]) {
                        row[c] += 1;
                    }
                }
            }
            row
        })
        .collect();
    let n = docs.len();
    let mut df = vec![0usize; k];
    for row in counts.chunks(k.max(1)) {
        for (d, &c) in df.iter_mut().zip(row) {
            *d += (c > 0) as usize;
        }
    }
    let idf: Vec<f64> = df
        .iter()
        .map(|&d| ((1.0 + n as f64) / (1.0 + d as f64)).ln() + 1.0)
        .collect();
    let mut tfidf = vec![0.0f64; n * k];
    if k > 0 {
        tfidf
            .par_chunks_mut(k)
            .zip(counts.par_chunks(k))
            .for_each(|(w, c)| {
                let mut ss = 0.0;
                for j in 0..k {
                    w[j] = c[j] as f64 * idf[j];
                    ss += w[j] * w[j];
                }
                if ss > 0.0 {
                    let norm = ss.sqrt();
                    w.iter_mut().for_each(|x| *x /= norm);
                }
            });
    }
    TermFeatures {
        n_docs: n,
        n_terms: k,
        counts,
        tfidf,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_names_reduce_to_their_content_words() {
        let a = Analyzer::default();
        // "n" is one character and "back" is on the Neurosynth stop list: the authors'
        // features cannot see the n-back task at all.
        assert!(a.tokens("n-back task").is_empty());
        assert_eq!(a.tokens("Eriksen Flanker Task"), vec!["eriksen", "flanker"]);
        assert!(a.tokens("the task").is_empty());
    }

    #[test]
    fn long_names_match_only_as_phrases() {
        let a = Analyzer::default();
        let names = vec![
            "stop signal reaction time".to_string(),
            "flanker".to_string(),
        ];
        let v = Vocabulary::new(&names, &a);
        let docs = vec!["A stop signal reaction time flanker study.".to_string()];
        let ng = term_features(&docs, &v, &a, Match::Ngram);
        assert_eq!(ng.counts, vec![0, 1]);
        let ph = term_features(&docs, &v, &a, Match::Phrase);
        assert_eq!(ph.counts, vec![1, 1]);
        // One document: idf = 1 for both, l2 rows.
        let s = 0.5f64.sqrt();
        assert!((ph.tfidf[0] - s).abs() < 1e-15 && (ph.tfidf[1] - s).abs() < 1e-15);
    }
}

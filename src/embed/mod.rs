//! Sentence embeddings for the retrieval baseline: a compact BERT encoder
//! (`bert`), sentence-transformers-style mean pooling on it (`sentence`, e.g.
//! all-MiniLM-L6-v2), and the same pooling over a T5's own encoder
//! (`base_encoder`, `embedder="base-encoder"`).

pub mod base_encoder;
pub mod bert;
pub mod sentence;

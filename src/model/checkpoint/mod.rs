//! Reading and writing weights: the base model's folder (safetensors, shards
//! or pickle; `load`), the tensor store behind it (`tensor_store`), expert and
//! gate files (`expert_file`), PEFT adapter folders (`peft`), safetensors with metadata (`st_io`), and the
//! T5's own weight set with its init and `save_pretrained` (`weights`).

pub mod expert_file;
pub mod load;
pub mod peft;
mod pickle_scan;
pub mod st_io;
pub mod tensor_store;
pub mod weights;

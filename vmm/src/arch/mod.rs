//! Architecture-specific VM setup. herd runs on x86_64 only for now.

pub mod x86_64;

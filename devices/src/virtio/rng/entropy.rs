//! Where virtio-rng's bytes come from.

/// A source of random bytes; the host's getrandom in production.
pub trait EntropySource: Send {
    fn fill(&mut self, buf: &mut [u8]) -> std::io::Result<()>;
}

/// The host kernel's CSPRNG through getrandom(2): never blocks once the
/// host has booted, which a VMM host has.
#[derive(Debug, Default)]
pub struct HostEntropy;

impl EntropySource for HostEntropy {
    fn fill(&mut self, buf: &mut [u8]) -> std::io::Result<()> {
        getrandom::fill(buf).map_err(std::io::Error::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_entropy_fills() {
        let mut a = [0u8; 32];
        let mut b = [0u8; 32];
        HostEntropy.fill(&mut a).unwrap();
        HostEntropy.fill(&mut b).unwrap();
        assert_ne!(a, b);
    }
}

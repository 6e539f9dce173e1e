//! The virtio devices a config asks for, created before KVM is touched (so
//! a missing image, a locked disk or a bad TAP is reported as the user's
//! input) and attached to the MMIO bus once the VM exists.

use std::path::Path;
use std::sync::{Arc, Mutex};

use devices::virtio::block::{Block, BlockConfig, BlockError};
use devices::virtio::net::{Net, NetConfig, NetError};
use devices::virtio::rng::{HostEntropy, Rng, RngError};
use devices::virtio::vsock::{Vsock, VsockError, DEFAULT_GUEST_CID};
use kvm_ioctls::VmFd;
use vm_memory::GuestMemoryMmap;

use super::mmio::{MmioDeviceManager, MmioError};
use crate::config::VmConfig;

/// GET_ID answers are at most 20 bytes.
const MAX_SERIAL: usize = 20;

#[derive(Debug, thiserror::Error)]
pub enum VirtioDeviceError {
    #[error(transparent)]
    Block(#[from] BlockError),
    #[error(transparent)]
    Net(#[from] NetError),
    #[error(transparent)]
    Rng(#[from] RngError),
    #[error(transparent)]
    Vsock(#[from] VsockError),
    #[error(transparent)]
    Mmio(#[from] MmioError),
    #[error(transparent)]
    HostNet(#[from] crate::host_net::HostNetError),
}

pub enum VirtioDeviceHandle {
    Block(Arc<Mutex<Block>>),
    Net(Arc<Mutex<Net>>),
    Rng(Arc<Mutex<Rng>>),
    Vsock(Arc<Mutex<Vsock>>),
}

/// The serial a guest reads from /sys/block/vdX/serial: the image's file
/// name without extension, cut to 20 bytes on a character boundary.
pub fn disk_serial(path: &Path) -> String {
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut end = stem.len().min(MAX_SERIAL);
    while !stem.is_char_boundary(end) {
        end -= 1;
    }
    stem[..end].to_owned()
}

/// Root first, then disks, then NICs, then the rng and vsock: the order of their MMIO slots and of
/// the `virtio_mmio.device=` entries `VmConfig::full_cmdline` wrote.
pub fn create(config: &VmConfig) -> Result<Vec<VirtioDeviceHandle>, VirtioDeviceError> {
    let mut handles = Vec::new();
    let disks = config
        .root
        .iter()
        .map(|root| (root.as_path(), true, "root".to_owned()))
        .chain(
            config
                .disks
                .iter()
                .map(|d| (d.path.as_path(), d.read_only, d.serial.clone())),
        );
    for (path, read_only, serial) in disks {
        let block = Block::new(BlockConfig {
            path: path.to_owned(),
            read_only,
            serial,
        })?;
        handles.push(VirtioDeviceHandle::Block(Arc::new(Mutex::new(block))));
    }
    for spec in &config.nets {
        let mac = config.nic_mac(spec);
        let net = Net::new(NetConfig {
            tap_name: spec.tap.clone(),
            mac,
        })?;
        crate::host_net::connect_tap(&spec.tap, spec.bridge.as_deref())?;
        log::debug!("NIC on TAP {} with MAC {mac:02x?}", spec.tap);
        handles.push(VirtioDeviceHandle::Net(Arc::new(Mutex::new(net))));
    }
    if config.rng {
        let rng = Rng::new(Box::new(HostEntropy))?;
        handles.push(VirtioDeviceHandle::Rng(Arc::new(Mutex::new(rng))));
    }
    if let Some(path) = &config.vsock {
        let vsock = Vsock::new(path, DEFAULT_GUEST_CID)?;
        log::debug!(
            "vsock: guest CID {DEFAULT_GUEST_CID}, host socket {}",
            path.display()
        );
        handles.push(VirtioDeviceHandle::Vsock(Arc::new(Mutex::new(vsock))));
    }
    Ok(handles)
}

pub fn attach_all(
    handles: Vec<VirtioDeviceHandle>,
    mmio: &mut MmioDeviceManager,
    vm: &VmFd,
    mem: &GuestMemoryMmap,
) -> Result<(), VirtioDeviceError> {
    for handle in handles {
        match handle {
            VirtioDeviceHandle::Block(block) => {
                let slot = mmio.attach(vm, mem, block)?;
                mmio.serve_last_on_io_thread();
                slot
            }
            VirtioDeviceHandle::Net(net) => mmio.attach(vm, mem, net)?,
            VirtioDeviceHandle::Rng(rng) => mmio.attach(vm, mem, rng)?,
            VirtioDeviceHandle::Vsock(vsock) => mmio.attach(vm, mem, vsock)?,
        };
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serials_come_from_file_names() {
        assert_eq!(disk_serial(Path::new("/var/lib/web1.img")), "web1");
        assert_eq!(
            disk_serial(Path::new("/x/an-appliance-with-a-long-name.img")),
            "an-appliance-with-a-"
        );
        assert_eq!(disk_serial(Path::new("/x/ééééééééééé.img")).len(), 20);
    }
}

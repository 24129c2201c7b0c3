//! KVM state: the VM file descriptor with its interrupt routing, and vCPUs.

pub mod cpuid;
pub mod exit_stats;
pub mod interrupts;
pub mod kvm_stats;
pub mod vcpu;
pub mod vm;

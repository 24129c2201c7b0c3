//! KVM GSI routing: the legacy IOAPIC/PIC pins plus one MSI route per
//! device vector, delivered through irqfds.
//!
//! KVM replaces the whole routing table on every `KVM_SET_GSI_ROUTING`, so
//! one [`GsiRouter`] per VM owns the table and re-installs it (legacy pins
//! included) whenever a device reprograms a vector.

use std::collections::BTreeMap;
use std::io;
use std::sync::{Arc, Mutex};

use kvm_bindings::{
    kvm_irq_routing_entry, kvm_irq_routing_entry__bindgen_ty_1, kvm_irq_routing_irqchip,
    kvm_irq_routing_msi, KvmIrqRouting, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER,
    KVM_IRQCHIP_PIC_SLAVE, KVM_IRQ_ROUTING_IRQCHIP, KVM_IRQ_ROUTING_MSI,
};
use kvm_ioctls::VmFd;
use vmm_sys_util::eventfd::EventFd;

use devices::interrupt::{MsiInterruptGroup, MsiMessage};

/// Number of IOAPIC pins (GSIs 0..24 are the legacy pins).
pub const IOAPIC_PINS: u32 = 24;
/// KVM's routing table limit.
const MAX_GSI: u32 = 4096;

fn to_io(e: kvm_ioctls::Error) -> io::Error {
    io::Error::from_raw_os_error(e.errno())
}

struct RouterState {
    next_gsi: u32,
    msi: BTreeMap<u32, MsiMessage>,
}

/// Owner of the VM's GSI routing table.
pub struct GsiRouter {
    vm: Arc<VmFd>,
    state: Mutex<RouterState>,
}

impl GsiRouter {
    /// Creates the router and installs the legacy routes.
    pub fn new(vm: Arc<VmFd>) -> io::Result<Arc<Self>> {
        let r = Arc::new(GsiRouter {
            vm,
            state: Mutex::new(RouterState {
                next_gsi: IOAPIC_PINS,
                msi: BTreeMap::new(),
            }),
        });
        {
            let st = r.state.lock().unwrap_or_else(|e| e.into_inner());
            r.install(&st)?;
        }
        Ok(r)
    }

    fn irqchip(gsi: u32, chip: u32, pin: u32) -> kvm_irq_routing_entry {
        kvm_irq_routing_entry {
            gsi,
            type_: KVM_IRQ_ROUTING_IRQCHIP,
            u: kvm_irq_routing_entry__bindgen_ty_1 {
                irqchip: kvm_irq_routing_irqchip { irqchip: chip, pin },
            },
            ..Default::default()
        }
    }

    fn install(&self, st: &RouterState) -> io::Result<()> {
        let mut entries = Vec::new();
        for gsi in 0..16u32 {
            if gsi == 2 {
                continue; // cascade
            }
            let (chip, pin) = if gsi < 8 {
                (KVM_IRQCHIP_PIC_MASTER, gsi)
            } else {
                (KVM_IRQCHIP_PIC_SLAVE, gsi - 8)
            };
            entries.push(Self::irqchip(gsi, chip, pin));
        }
        for gsi in 0..IOAPIC_PINS {
            entries.push(Self::irqchip(gsi, KVM_IRQCHIP_IOAPIC, gsi));
        }
        for (&gsi, m) in &st.msi {
            entries.push(kvm_irq_routing_entry {
                gsi,
                type_: KVM_IRQ_ROUTING_MSI,
                u: kvm_irq_routing_entry__bindgen_ty_1 {
                    msi: kvm_irq_routing_msi {
                        address_lo: m.addr_lo,
                        address_hi: m.addr_hi,
                        data: m.data,
                        ..Default::default()
                    },
                },
                ..Default::default()
            });
        }
        let table = KvmIrqRouting::from_entries(&entries)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "routing table too large"))?;
        self.vm.set_gsi_routing(&table).map_err(to_io)
    }

    /// Allocates `n` GSIs for MSI vectors, each with an irqfd, as one group.
    pub fn new_msi_group(self: &Arc<Self>, n: usize) -> io::Result<KvmMsiGroup> {
        let mut vectors = Vec::with_capacity(n);
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        for _ in 0..n {
            if st.next_gsi >= MAX_GSI {
                return Err(io::Error::other("out of GSIs"));
            }
            let gsi = st.next_gsi;
            st.next_gsi += 1;
            let evt = EventFd::new(libc::EFD_NONBLOCK)?;
            self.vm.register_irqfd(&evt, gsi).map_err(to_io)?;
            vectors.push((gsi, evt));
        }
        Ok(KvmMsiGroup {
            router: self.clone(),
            vectors,
        })
    }

    fn set_route(&self, gsi: u32, msg: Option<MsiMessage>) -> io::Result<()> {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let changed = match msg {
            Some(m) => st.msi.insert(gsi, m) != Some(m),
            None => st.msi.remove(&gsi).is_some(),
        };
        if changed {
            self.install(&st)?;
        }
        Ok(())
    }
}

/// MSI vectors of one device: each is a GSI with an MSI route and an irqfd.
pub struct KvmMsiGroup {
    router: Arc<GsiRouter>,
    vectors: Vec<(u32, EventFd)>,
}

impl MsiInterruptGroup for KvmMsiGroup {
    fn len(&self) -> usize {
        self.vectors.len()
    }

    fn update(&self, index: usize, msg: MsiMessage, enabled: bool) -> io::Result<()> {
        let (gsi, _) = self
            .vectors
            .get(index)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no such vector"))?;
        self.router.set_route(*gsi, enabled.then_some(msg))
    }

    fn trigger(&self, index: usize) -> io::Result<()> {
        match self.vectors.get(index) {
            Some((_, evt)) => evt.write(1),
            None => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "no such vector",
            )),
        }
    }

    fn notifier(&self, index: usize) -> Option<&EventFd> {
        self.vectors.get(index).map(|(_, e)| e)
    }
}

//! The notifier the manager puts in front of the VMM's: PME_Status first, root port PME itself.

use crate::pme::{Delivery, EventFdNotifier, GuestNotifier, NotifyError, PmCapability, WakeRoute};
use std::sync::{Arc, Mutex};

use super::lock;

/// Root port PME routes the manager owns go to its own [`EventFdNotifier`] (PME_Status if
/// PME_En, PME message, root port irqfd). Every other route: sets PME_Status in the emulated PM
/// capability of every device on the route, then delivers through the VMM's notifier.
pub(super) struct PmeStatusNotifier {
    /// The VMM's notifier; `None` when the VMM gave none (only root port routes then work).
    pub(super) inner: Option<Box<dyn GuestNotifier>>,
    pub(super) targets: Vec<(WakeRoute, Arc<Mutex<PmCapability>>)>,
    pub(super) root_ports: EventFdNotifier,
    pub(super) root_port_rids: Vec<u16>,
}

impl GuestNotifier for PmeStatusNotifier {
    fn notify(&self, route: WakeRoute) -> Result<Delivery, NotifyError> {
        if let WakeRoute::PciPme { requester_id } = route {
            if self.root_port_rids.contains(&requester_id) {
                return self.root_ports.notify(route);
            }
        }
        let inner = self
            .inner
            .as_ref()
            .ok_or(NotifyError::UnknownRoute(route))?;
        for (r, cap) in &self.targets {
            if *r == route {
                lock(cap).signal_pme();
            }
        }
        inner.notify(route)
    }
}

//! Running a container: the VMM process, the agent session, published ports, and the supervisor
//! that ties them together for the container's whole life.

pub mod ports;
pub mod session;
pub mod supervisor;
pub mod vm;

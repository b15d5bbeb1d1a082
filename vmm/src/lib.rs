//! A KVM virtual machine monitor that boots one Linux microVM.

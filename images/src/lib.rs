//! OCI images for bulkhead.

"""The discrete-event fleet simulator: workloads in, per-strategy metrics out."""

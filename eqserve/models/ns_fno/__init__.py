"""ns-fno: steady 2-D Navier–Stokes as a DEQ with Fourier layers, its solver, data and training."""

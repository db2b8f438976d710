//! Where ops run: the CPU, or a CUDA device through cudarc.

"""Gaussian mixtures: the model (:mod:`.model`), E-step (:mod:`.estep`, compiled inner loop in
:mod:`.kernels`), initialisation (:mod:`.initialise`), EM (:mod:`.em`) over processes or Dask
(:mod:`.engine`), and MAP adaptation (:mod:`.map`)."""

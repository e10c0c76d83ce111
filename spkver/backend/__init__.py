"""After the models: LLR scoring (:mod:`.scoring`), score normalisation and cohorts (:mod:`.scorenorm`),
calibration (:mod:`.calibration`), metrics (:mod:`.metrics`) and DET plots (:mod:`.plots`)."""

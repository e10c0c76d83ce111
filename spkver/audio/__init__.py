"""Audio in: sources and lists (:mod:`.sources`), decoding (:mod:`.decode`), resampling (:mod:`.resample`)."""

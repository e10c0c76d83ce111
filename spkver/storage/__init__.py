"""What spkver keeps on disk: model files and EM checkpoints (:mod:`.models`), the speaker store
(:mod:`.speakers`), trial lists and score files (:mod:`.trials`)."""

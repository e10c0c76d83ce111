"""Features: settings (:mod:`.config`), MFCC (:mod:`.mfcc`), VAD (:mod:`.vad`) and normalisation
(:mod:`.normalise`) of one utterance (:mod:`.frontend`); many recordings in parallel
(:mod:`.extraction`) and features on disk (:mod:`.store`)."""

"""Local auto-labelling: ACE-Step's own 5 Hz LM listens to a song's audio codes and writes its caption, metadata and lyrics."""

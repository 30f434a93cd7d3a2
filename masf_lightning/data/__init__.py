"""BreaKHis index and train/val/test splits: tables first, so every split can be saved and audited."""

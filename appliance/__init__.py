"""The appliance core: settings, registry, engines, supervisor. It never imports api/ or tui/."""

"""Did the call help? Randomised holdouts, measured outcomes, impact with its uncertainty, and uplift.

- :mod:`.holdout`: which eligible accounts are held out (a hash of customer and campaign period);
- :mod:`.stats`: save rates, their difference with a 95% interval, the minimum detectable effect;
- :mod:`.outcomes`: what became of each treated and control account once its horizon has passed;
- :mod:`.report`: impact overall and per play, revenue kept and ROI, as the CLI and the overview show it;
- :mod:`.play_effects`: each play's relative reduction of churn, treated against held out, shrunk;
- :mod:`.uplift`: T-, X- and per-play learners on LightGBM; :mod:`.qini`: Qini and AUUC of a ranking.

Everything here is pure (frames in, frames or dataclasses out); the store and files are the CLI's.
"""

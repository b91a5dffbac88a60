"""Did the call help? Randomised holdouts, measured outcomes, impact with its uncertainty, and uplift.

- :mod:`.holdout`: which eligible accounts are held out (a hash of customer and campaign period);
- :mod:`.stats`: save rates, their difference with a 95% interval, the minimum detectable effect;
- :mod:`.outcomes`: what became of each treated and control account once its horizon has passed;
- :mod:`.report`: impact overall and per play, revenue kept and ROI, as the CLI and the overview show it;
- :mod:`.uplift`: a T-learner on LightGBM and the Qini / AUUC evaluation of an uplift ranking.

Everything here is pure (frames in, frames or dataclasses out); the store and files are the CLI's.
"""

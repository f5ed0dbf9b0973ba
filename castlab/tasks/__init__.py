"""castlab's local lm-eval task templates (one ``castlab_<task>.yaml`` per offline benchmark).

Each template ``include``s lm-eval's own task YAML and replaces only the data source;
``castlab.downstream.zeroshot`` renders the placeholders to this machine's paths at run time.
"""

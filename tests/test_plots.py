"Plot labels with and without a CJK font: drawn when one is installed, escaped (never boxes) when none is."
import warnings

import pytest

import dataalchemy.core as core


def test_plot_label_without_a_cjk_font(monkeypatch):
    monkeypatch.setattr(core, 'cjk_font', lambda: None)
    assert core.plot_label('拒绝 x') == '\\u62d2\\u7edd x'
    assert core.plot_label('kept 3 of 5') == 'kept 3 of 5'


def test_stats_plot_draws_chinese_without_missing_glyphs():
    pytest.importorskip('matplotlib')
    from matplotlib.figure import Figure
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    st = core.Stats('过滤'); st.seen(2); st.drop(None, '拒绝回答'); st.drop(None, 'too short')
    fig = Figure(figsize=(3, 1)); ax = fig.subplots()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        st.plot(ax); FigureCanvasAgg(fig).draw()
    assert not [w for w in caught if 'missing from font' in str(w.message)]
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert ('拒绝回答' in labels) == (core.cjk_font() is not None)

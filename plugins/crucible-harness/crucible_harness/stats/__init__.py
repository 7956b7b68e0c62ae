"""Statistics for comparing runs and evaluations, on scipy and numpy.

Hypothesis tests (:mod:`.significance`), effect sizes (:mod:`.effects`),
power and sample size of t-tests (:mod:`.power`), multiple-comparison
corrections (:mod:`.corrections`), bootstrap confidence intervals
(:mod:`.bootstrap`) and :func:`compare`, which picks the test for two
samples and says why (:mod:`.compare`). Importing this package imports
numpy and scipy: import it where statistics are computed, not at start-up.
"""

from __future__ import annotations

from crucible_harness.stats.bootstrap import Interval, bootstrap_ci, difference_ci
from crucible_harness.stats.compare import TESTS, Comparison, compare
from crucible_harness.stats.corrections import (
    Corrected,
    benjamini_hochberg,
    bonferroni,
    correct,
    holm,
)
from crucible_harness.stats.effects import (
    EffectSize,
    cohens_d,
    cohens_dz,
    eta_squared,
    glass_delta,
    hedges_g,
    omega_squared,
    paired_rank_biserial,
    rank_biserial,
)
from crucible_harness.stats.power import t_test_power, t_test_sample_size
from crucible_harness.stats.significance import (
    TestResult,
    fisher_exact,
    kruskal_wallis,
    levene,
    mann_whitney_u,
    mcnemar,
    one_way_anova,
    paired_t,
    shapiro_wilk,
    student_t,
    welch_t,
    wilcoxon_signed_rank,
)

__all__ = [
    "TESTS",
    "Comparison",
    "Corrected",
    "EffectSize",
    "Interval",
    "TestResult",
    "benjamini_hochberg",
    "bonferroni",
    "bootstrap_ci",
    "cohens_d",
    "cohens_dz",
    "compare",
    "correct",
    "difference_ci",
    "eta_squared",
    "fisher_exact",
    "glass_delta",
    "hedges_g",
    "holm",
    "kruskal_wallis",
    "levene",
    "mann_whitney_u",
    "mcnemar",
    "omega_squared",
    "one_way_anova",
    "paired_rank_biserial",
    "paired_t",
    "rank_biserial",
    "shapiro_wilk",
    "student_t",
    "t_test_power",
    "t_test_sample_size",
    "welch_t",
    "wilcoxon_signed_rank",
]

# Kenward-Roger references for sm_hlm.kenward_roger (pbkrtest, lmerTest).
#
# Run from the repository root:
#
#     Rscript validation/r/kr_pbkrtest.R
#
# Writes validation/r/kr_pbkrtest.json, read by tests/test_kenward_roger.py.
# Needs lme4, pbkrtest, lmerTest, jsonlite (Debian: r-cran-pbkrtest
# r-cran-lmertest).
#
# Cases (every model fitted by REML with lme4's default lmerControl()):
#   nels_fit2:  mscore ~ flp*ses + (ses | school)          ../shared/data/nels.csv
#   nels_fit1:  mscore ~ flp + ses + (1 | school)          (random intercept)
#   slope:      y ~ x*z + (x | group)                      data/slope.csv
#   three:      y ~ x + z + (x + z | group)                data/three.csv
#   indep:      y ~ x + (x || group)                       data/indep.csv (two lme4 terms)
#   singular:   y ~ x + (x | group)                        data/kr_singular.csv (boundary fit:
#               slope SD 0, Psi singular; python -m validation.r.make_kr_data writes the data)
# The simulated data sets (unequal, Poisson group sizes) come from
# sm_hlm.simulate.simulate_mixed via validation/r/make_core_data.py.
#
# Fields of each case:
# * formula, data, nobs, fixef_names, fixef, theta (lme4 order), sigma, vcov
# * vcovAdj: pbkrtest::vcovAdj(fit) (the adjusted covariance Phi_A), rows
#   ordered as fixef_names; vcovAdj_from_ML: the same from the ML fit of the
#   same model (pbkrtest refits it by REML), to check the refit path
# * coef: per coefficient, from pbkrtest::Lb_ddf(unit row, vcov, vcovAdj):
#   "ddf", and "se_adj" = sqrt(diag(vcovAdj)); "lmerTest" holds lmerTest's
#   summary(fit, ddf = "Kenward-Roger")$coefficients columns
# * contrasts: list of {"L": rows, "betaH": vector or null, and KRmodcomp's
#   Ftest row: "Fstat", "ndf", "ddf", "F.scaling", "p.value", plus "FstatU",
#   "p.valueU" and aux "A1", "A2", "rho"}
# * isSingular
# * versions

local({
  arg <- grep("^--file=", commandArgs(trailingOnly = FALSE), value = TRUE)
  dir <- if (length(arg)) dirname(sub("^--file=", "", arg[1])) else "validation/r"
  source(file.path(dir, "common.R"))
})
suppressPackageStartupMessages({
  library(pbkrtest)
  library(lmerTest)
})

unit_rows <- function(p) lapply(seq_len(p), function(i) { v <- rep(0, p); v[i] <- 1; v })

cases <- list(
  list(name = "nels_fit2", data = "nels", formula = "mscore ~ flp*ses + (ses | school)",
       contrasts = list(list(L = rbind(c(0, 1, 0, 0), c(0, 0, 0, 1))),
                        list(L = rbind(c(0, 1, 0, 0), c(0, 0, 1, 0), c(0, 0, 0, 1))),
                        list(L = rbind(c(0, 1, 1, 0)), betaH = c(0, 1, 2, 0)))),
  list(name = "nels_fit1", data = "nels", formula = "mscore ~ flp + ses + (1 | school)",
       contrasts = list(list(L = rbind(c(0, 1, 0), c(0, 0, 1))))),
  list(name = "slope", data = "slope.csv", formula = "y ~ x*z + (x | group)",
       contrasts = list(list(L = rbind(c(0, 1, 0, 0), c(0, 0, 0, 1))),
                        list(L = rbind(c(0, 1, 0, 0), c(0, 0, 1, 0), c(0, 0, 0, 1)),
                             betaH = c(0, 2, 0.3, 0.2)))),
  list(name = "three", data = "three.csv", formula = "y ~ x + z + (x + z | group)",
       contrasts = list(list(L = rbind(c(0, 1, 0), c(0, 0, 1))))),
  list(name = "indep", data = "indep.csv", formula = "y ~ x + (x || group)",
       contrasts = list(list(L = rbind(c(1, 0), c(0, 1))))),
  list(name = "singular", data = "kr_singular.csv", formula = "y ~ x + (x | group)",
       contrasts = list(list(L = rbind(c(1, 0), c(0, 1)))))
)

out <- list()
for (cs in cases) {
  d <- if (cs$data == "nels") read_nels() else read_sim(cs$data)
  fit <- lme4::lmer(as.formula(cs$formula), data = d, REML = TRUE)
  fit_ml <- lme4::lmer(as.formula(cs$formula), data = d, REML = FALSE)
  V0 <- as.matrix(vcov(fit))
  Va <- vcovAdj(fit)
  Va_ml <- vcovAdj(fit_ml)
  p <- length(fixef(fit))
  ddf <- vapply(unit_rows(p), function(l) Lb_ddf(l, V0, Va), 0)
  lt <- summary(lmerTest::as_lmerModLmerTest(fit), ddf = "Kenward-Roger")$coefficients
  lt_cols <- list(names = I(rownames(lt)))
  for (cn in colnames(lt)) lt_cols[[cn]] <- I(unname(lt[, cn]))
  ctr <- lapply(cs$contrasts, function(ct) {
    betaH <- if (is.null(ct$betaH)) 0 else ct$betaH
    kr <- KRmodcomp(fit, ct$L, betaH = betaH)
    st <- kr$stats
    list(L = ct$L, betaH = if (is.null(ct$betaH)) NULL else I(ct$betaH),
         Fstat = st$Fstat, ndf = st$ndf, ddf = st$ddf, F.scaling = st$F.scaling,
         p.value = st$p.value, FstatU = st$FstatU, p.valueU = st$p.valueU,
         A1 = unname(st$aux["A1"]), A2 = unname(st$aux["A2"]), rho = unname(st$aux["rho"]))
  })
  out[[cs$name]] <- list(
    formula = cs$formula, data = cs$data, nobs = nobs(fit),
    fixef_names = I(names(fixef(fit))), fixef = I(unname(fixef(fit))),
    theta = I(unname(getME(fit, "theta"))), theta_names = I(names(getME(fit, "theta"))),
    sigma = sigma(fit), vcov = unname(V0), isSingular = isSingular(fit),
    vcovAdj = unname(as.matrix(Va)), vcovAdj_from_ML = unname(as.matrix(Va_ml)),
    coef = list(ddf = I(ddf), se_adj = I(sqrt(diag(as.matrix(Va))))),
    lmerTest = lt_cols, contrasts = ctr)
  cat(cs$name, "done\n")
}
out$versions <- list(lme4 = lme4_version, pbkrtest = as.character(packageVersion("pbkrtest")),
                     lmerTest = as.character(packageVersion("lmerTest")), R = r_version)
write_json_full(out, file.path(here, "kr_pbkrtest.json"))

# nlme references for residual structures within the innermost units of a nested model
# (issue 8, item 5), written to validation/r/multilevel_residual_nlme.json:
#
#     python -m validation.r.make_multilevel_residual_data
#     Rscript validation/r/multilevel_residual_nlme.R
#
# lme(y ~ x + time, random = ~ 1 | school/child, correlation = corAR1(form = ~ time)) and
# corCAR1, and weights = varIdent(form = ~ 1 | half) (half = time > 3: a variance ratio);
# ML and REML, tight tolerances: logLik, fixef, SEs, variance components, Phi or the ratio.
source(file.path("validation/r", "common.R"))
suppressPackageStartupMessages(library(nlme))
d <- read.csv(file.path(data_dir, "ml_panel_ar1.csv"))
d$half <- factor(ifelse(d$time > 3, "late", "early"))
ctrl <- lmeControl(maxIter = 500, msMaxIter = 500, tolerance = 1e-10, msTol = 1e-12,
                   niterEM = 100)
out <- list()
for (cor in c("AR1", "CAR1", "HET")) {
  for (REML in c(FALSE, TRUE)) {
    meth <- if (REML) "REML" else "ML"
    if (cor == "HET") {
      fit <- lme(y ~ x + time, random = ~ 1 | school/child,
                 weights = varIdent(form = ~ 1 | half), data = d, method = meth,
                 control = ctrl)
    } else {
      cs <- if (cor == "AR1") corAR1(form = ~ time) else corCAR1(form = ~ time)
      fit <- lme(y ~ x + time, random = ~ 1 | school/child, correlation = cs, data = d,
                 method = meth, control = ctrl)
    }
    vc <- VarCorr(fit)
    key <- paste0(cor, "_", if (REML) "REML" else "ML")
    out[[key]] <- list(
      REML = REML, logLik = as.numeric(logLik(fit)), fixef = as.list(fixef(fit)),
      se = I(unname(sqrt(diag(vcov(fit))))),
      sd_school = as.numeric(vc[2, "StdDev"]), sd_child = as.numeric(vc[4, "StdDev"]),
      sigma = fit$sigma,
      phi = if (cor == "HET") as.numeric(coef(fit$modelStruct$varStruct,
                                               unconstrained = FALSE))
            else as.numeric(coef(fit$modelStruct$corStruct, unconstrained = FALSE)))
  }
}
write_json_full(out, file.path(here, "multilevel_residual_nlme.json"))

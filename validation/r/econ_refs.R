# Econometrics references: clubSandwich's small-sample cluster-robust tests
# and the Hausman test (random vs fixed effects), for sm_hlm.cluster_tests.
#
# Run from the repository root:
#
#     Rscript validation/r/econ_refs.R
#
# Writes validation/r/econ_refs.json, read by tests/test_cluster_tests.py.
# Needs lme4, clubSandwich, plm, jsonlite (Debian: r-cran-clubsandwich r-cran-plm).
#
# Cases "<name>_<ML|REML>" (lme4::lmer, default lmerControl()):
#   nels_fit2: mscore ~ flp*ses + (ses | school)   ../shared/data/nels.csv
#              (flp is constant within schools: the within-varying columns are
#              ses and flp:ses)
#   nels_ri:   mscore ~ flp + ses + (1 | school)   (random intercept: the classic test's setting)
#   slope_ri:  y ~ x*z + (1 | group)               data/slope.csv
#   slope:     y ~ x*z + (x | group)               data/slope.csv (x, z, x:z vary within)
# With random slopes V_FE - V_RE is not positive definite and the classic
# statistic is negative (the formula's value is stored as is).
#
# Fields of each case:
# * formula, fixef_names, fixef, theta (lme4's, to evaluate sm_hlm at the same point)
# * coef_test: clubSandwich::coef_test(fit, vcov = "CR2", test = "Satterthwaite")
#   columns beta, SE, tstat, df_Satt, p_Satt; coef_test_CR0: the same with
#   vcov = "CR0" (its Satterthwaite df too)
# * wald: list of {"C": constraint rows, and for each test in chi-sq, HTZ:
#   "<test>": {Fstat, delta, df_num, df_denom, p_val}} from
#   Wald_test(fit, C, vcov = "CR2", test = c("chi-sq", "HTZ"))
# * hausman: "within_names" (the within-varying fixed effects), "b_fe", "V_fe"
#   (lm(y ~ <within columns> + factor(group)): coefficients and vcov, i.e.
#   sigma^2 with n - m - k residual df), "sigma2_fe", "df_resid_fe", "b_re",
#   "V_re" (the lmer fit's fixef and vcov for the same columns), "chi2" =
#   (b_fe - b_re)'(V_fe - V_re)^-1 (b_fe - b_re), "df", "p_value";
#   "plm_within_coef", "plm_within_vcov" (plm(model = "within")) and
#   "phtest_swar" (plm::phtest against plm's Swamy-Arora random-effects
#   estimator; a different RE estimator, for information)
# * mundlak: the lmer fit with the group means of the within columns added
#   ("mean(<name>)"), fixef, theta, vcov and the clubSandwich Wald_test of the means = 0 with
#   vcov = "CR2" (chi-sq and HTZ) and "CR1" (chi-sq)
# * versions

local({
  arg <- grep("^--file=", commandArgs(trailingOnly = FALSE), value = TRUE)
  dir <- if (length(arg)) dirname(sub("^--file=", "", arg[1])) else "validation/r"
  source(file.path(dir, "common.R"))
})
suppressPackageStartupMessages({
  library(clubSandwich)
  library(plm)
})

cases <- list(
  list(name = "nels_fit2", data = "nels", group = "school", y = "mscore",
       formula = "mscore ~ flp*ses + (ses | school)",
       within = list(ses = quote(ses), `flp:ses` = quote(flp * ses)),
       wald = list(rbind(c(0, 1, 0, 0), c(0, 0, 0, 1)), rbind(c(0, 0, 1, 0), c(0, 0, 0, 1)),
                   rbind(c(0, 1, 0, 0), c(0, 0, 1, 0), c(0, 0, 0, 1)))),
  list(name = "nels_ri", data = "nels", group = "school", y = "mscore",
       formula = "mscore ~ flp + ses + (1 | school)",
       within = list(ses = quote(ses)),
       wald = list(rbind(c(0, 1, 0), c(0, 0, 1)))),
  list(name = "slope_ri", data = "slope.csv", group = "group", y = "y",
       formula = "y ~ x*z + (1 | group)",
       within = list(x = quote(x), z = quote(z), `x:z` = quote(x * z)),
       wald = list(rbind(c(0, 1, 0, 0), c(0, 0, 0, 1)))),
  list(name = "slope", data = "slope.csv", group = "group", y = "y",
       formula = "y ~ x*z + (x | group)",
       within = list(x = quote(x), z = quote(z), `x:z` = quote(x * z)),
       wald = list(rbind(c(0, 1, 0, 0), c(0, 0, 0, 1)),
                   rbind(c(0, 1, 0, 0), c(0, 0, 1, 0), c(0, 0, 0, 1))))
)

wald_rows <- function(w) {
  out <- list()
  for (i in seq_len(nrow(w))) {
    out[[as.character(w$test[i])]] <- list(Fstat = w$Fstat[i], delta = w$delta[i],
      df_num = w$df_num[i], df_denom = w$df_denom[i], p_val = w$p_val[i])
  }
  out
}

out <- list()
for (cs in cases) {
  d <- if (cs$data == "nels") read_nels() else read_sim(cs$data)
  g <- d[[cs$group]]
  wnames <- names(cs$within)
  safe <- paste0("w", seq_along(wnames))
  for (i in seq_along(wnames)) d[[safe[i]]] <- eval(cs$within[[i]], d)
  for (i in seq_along(wnames)) d[[paste0("m", safe[i])]] <- ave(d[[safe[i]]], g)
  # within (fixed-effects) estimator: dummies for the groups
  f_fe <- as.formula(paste(cs$y, "~", paste(safe, collapse = " + "), "+ factor(", cs$group, ")"))
  fe <- lm(f_fe, data = d)
  b_fe <- coef(fe)[safe]
  V_fe <- vcov(fe)[safe, safe]
  pdat <- pdata.frame(d, index = cs$group)
  f_plm <- as.formula(paste(cs$y, "~", paste(safe, collapse = " + ")))
  plm_w <- plm(f_plm, data = pdat, model = "within")
  f_plm_re <- as.formula(paste(cs$y, "~", paste(c(safe, setdiff(all.vars(as.formula(cs$formula)),
    c(cs$y, cs$group, all.vars(as.formula(paste("~", paste(wnames[!grepl(":", wnames)],
    collapse = "+")))))) ), collapse = " + ")))
  plm_re <- plm(f_plm_re, data = pdat, model = "random")
  ph <- phtest(plm_w, plm_re)
  for (REML in c(FALSE, TRUE)) {
    fit <- lmer(as.formula(cs$formula), data = d, REML = REML)
    key <- paste0(cs$name, "_", if (REML) "REML" else "ML")
    ct <- coef_test(fit, vcov = "CR2", test = "Satterthwaite")
    ct0 <- coef_test(fit, vcov = "CR0", test = "Satterthwaite")
    wald <- lapply(cs$wald, function(C) c(list(C = C), wald_rows(
      Wald_test(fit, constraints = C, vcov = "CR2", test = c("chi-sq", "HTZ")))))
    b_re <- fixef(fit)[wnames]
    V_re <- as.matrix(vcov(fit))[wnames, wnames]
    dlt <- b_fe - b_re
    Vd <- V_fe - V_re
    chi2 <- as.numeric(t(dlt) %*% solve(Vd, dlt))
    # Mundlak / Wooldridge: RE with the group means, robust Wald test of the means
    f_m <- as.formula(paste(cs$formula, "+", paste(paste0("m", safe), collapse = " + ")))
    fm <- lmer(f_m, data = d, REML = REML)
    mc <- paste0("m", safe)
    Cm <- constrain_zero(mc, coefs = fixef(fm))
    wm2 <- Wald_test(fm, constraints = Cm, vcov = "CR2", test = c("chi-sq", "HTZ"))
    wm1 <- Wald_test(fm, constraints = Cm, vcov = "CR1", test = "chi-sq")
    out[[key]] <- list(
      formula = cs$formula, REML = REML, fixef_names = I(names(fixef(fit))),
      theta = I(unname(getME(fit, "theta"))),
      fixef = I(unname(fixef(fit))),
      coef_test = list(beta = I(ct$beta), SE = I(ct$SE), tstat = I(ct$tstat),
                       df_Satt = I(ct$df_Satt), p_Satt = I(ct$p_Satt)),
      coef_test_CR0 = list(SE = I(ct0$SE), df_Satt = I(ct0$df_Satt)),
      wald = wald,
      hausman = list(within_names = I(wnames), b_fe = I(unname(b_fe)), V_fe = unname(V_fe),
                     sigma2_fe = sigma(fe)^2, df_resid_fe = df.residual(fe),
                     b_re = I(unname(b_re)), V_re = unname(V_re), chi2 = chi2,
                     df = length(wnames), p_value = pchisq(chi2, length(wnames), lower.tail = FALSE),
                     plm_within_coef = I(unname(coef(plm_w)[safe])),
                     plm_within_vcov = unname(vcov(plm_w)[safe, safe]),
                     phtest_swar = list(statistic = unname(ph$statistic),
                                        df = unname(ph$parameter), p_value = ph$p.value)),
      mundlak = list(fixef_names = I(names(fixef(fm))), fixef = I(unname(fixef(fm))),
                     theta = I(unname(getME(fm, "theta"))), vcov = unname(as.matrix(vcov(fm))),
                     CR2 = wald_rows(wm2), CR1 = wald_rows(wm1)))
    cat(key, "done\n")
  }
}
out$versions <- list(lme4 = lme4_version,
                     clubSandwich = as.character(packageVersion("clubSandwich")),
                     plm = as.character(packageVersion("plm")), R = r_version)
write_json_full(out, file.path(here, "econ_refs.json"))

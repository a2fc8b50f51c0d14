# Inference references for models with a structured residual covariance (nlme, clubSandwich,
# emmeans), for tests/test_residual_inference.py.
#
# Run from the repository root (the panels are written by
# `python -m validation.r.make_residual_data`):
#
#     Rscript validation/r/residual_inference_refs.R
#
# Writes validation/r/residual_inference_refs.json; the tests read it and never need R.
# Needs nlme, clubSandwich, emmeans (Debian: r-cran-emmeans), numDeriv, jsonlite.
#
# Cases (fixed part y ~ wave * trt, panels sorted by (subject, wave) as in residual_nlme.R;
# keys `<case>_ML`, `<case>_REML`):
#   gls_ar1        panel_ar1.csv        gls, corAR1(~ wave | subject)
#   gls_car1       panel_car1.csv       gls, corCAR1(~ time | subject)
#   gls_cs         panel_cs.csv         gls, corCompSymm(~ 1 | subject)
#   gls_un         panel_un.csv         gls, corSymm(~ pos | subject) + varIdent(~ 1 | wave)
#   gls_ar1h       panel_ar1h.csv       gls, corAR1 + varIdent(~ 1 | wave)
#   lme_ri_ar1     panel_ri_ar1.csv     lme(~ 1 | subject), corAR1
#   lme_slope_ar1  panel_slope_ar1.csv  lme(~ wave | subject), corAR1
#   lme_ri_het     panel_ri_ar1.csv     lme(~ 1 | subject), varIdent(~ 1 | wave)
#
# What is computed for each fit
# * `params`: nlme's estimates in sm_hlm's parametrisation, so that the tests can evaluate
#   sm_hlm's inference at exactly nlme's parameters: fixef, vcov, cov_re (getVarCov),
#   sigma_ref (the residual SD of wave 0, sm_hlm's sigma), corr (natural correlation
#   parameters, coef(corStruct, unconstrained = FALSE)), sd_ratio (varIdent ratios relative
#   to wave 0), logLik.
# * `satterthwaite` (an independent computation of lmerTest's recipe, written here with dense
#   per-subject matrices; it shares no code with sm_hlm): the variance parameters are nlme's
#   own, par = (coef(modelStruct), i.e. its unconstrained reStruct/corStruct/varStruct
#   coefficients, and log sigma).  For any par, nlme's structure objects give the matrices
#   (`coef<-` on the modelStruct, then corMatrix() of the corStruct, coef(varStruct,
#   allCoef = TRUE) for the SD of each stratum, pdMatrix() of the reStruct times sigma^2 for
#   Psi), V_j = Z_j Psi Z_j' + sigma^2 S_j C_j S_j, and
#       D(par)   = sum_j log|V_j| + r'V^-1 r + n log(2 pi)      (ML; beta = GLS estimate)
#                  + log|X'V^-1 X| - p log(2 pi)                (REML)
#       C(par)   = (X'V^-1 X)^-1 = cov(beta).
#   `check_logLik` = -D/2 and `check_vcov` = C at nlme's estimates, to compare with
#   logLik(fit) and vcov(fit) (nlme's gls ML vcov is larger by N / (N - p)).
#   H = numDeriv::hessian(D) and J = numDeriv::jacobian(C) at nlme's estimates (Richardson
#   extrapolation), A = 2 H^-1, and for each coefficient (unit contrast L)
#   df = 2 (L C L')^2 / (g' A g), g_i = L dC/dpar_i L'.
# * `emmeans_df`: emmeans' Satterthwaite df for the same unit contrasts,
#   ref_grid(fit, mode = "satterthwaite")@dffun(L, @dfargs).  For gls this is its analytic
#   mode (numDeriv Jacobian of varBeta, A = nlme's apVar from fdHess; vcov with the
#   N / (N - p) factor for ML); for lme emmeans only has "appx-satterthwaite", which
#   estimates dC/dpar by regressing refits on jittered responses (random; set.seed(1)).
#   Both are approximate: looser tolerances in the tests.  On lme_slope_ar1 emmeans stops
#   with "Unable to estimate Satterthwaite parameters" (null entries in the JSON).
# * `cr2`: clubSandwich::vcovCR(fit, cluster = subject, type = "CR2") and "CR0",
#   coef_test(fit, vcov = "CR2", test = "Satterthwaite") (SE, df_Satt),
#   Wald_test(fit, constraints = constrain_zero(c(2, 4)), vcov = "CR2", test = "HTZ").
#   clubSandwich's working model is nlme's fitted V_j (target and weights).
# * `profile` (ML fits of gls_ar1, gls_car1, gls_cs, lme_ri_ar1 -- the refits of the others
#   are slow; a profile likelihood by nlme refits, no counterpart in nlme itself):
#   for the correlation parameter (Phi or Rho) the structure is fixed at a value
#   (corAR1(value = v, fixed = TRUE), ...) and every other parameter refitted by ML; for a
#   fixed effect b_k the model is refitted with y - v x_k as the response and x_k dropped;
#   for sigma (gls without varIdent) with glsControl(sigma = v).  The interval ends
#   are the roots of -2 (logLik(v) - logLik(fit)) = qchisq(0.95, 1) (uniroot, tol 1e-10).

suppressPackageStartupMessages({
  library(nlme)
  library(clubSandwich)
  library(emmeans)
  library(numDeriv)
})
source(file.path("validation", "r", "common.R"))

read_panel <- function(name) {
  d <- read.csv(file.path(data_dir, paste0("panel_", name, ".csv")))
  d <- d[order(d$subject, d$wave), ]
  d$pos <- as.integer(d$wave + 1L)
  d$subject <- factor(d$subject)
  rownames(d) <- NULL
  d
}

gls_ctrl <- function(...) glsControl(maxIter = 500, msMaxIter = 1000, tolerance = 1e-10, ...)
lme_ctrl <- function(...) lmeControl(maxIter = 500, msMaxIter = 1000, msMaxEval = 5000,
                                     niterEM = 50, tolerance = 1e-10, ...)
F <- y ~ wave * trt

# a correlation structure constructor: default start (v = NULL) or fixed at v
mk_cor <- function(ctor, form) function(v = NULL) {
  if (is.null(v)) ctor(form = form) else ctor(v, form = form, fixed = TRUE)
}
cases <- list(
  gls_ar1 = list(data = "ar1", kind = "gls", cor = mk_cor(corAR1, ~ wave | subject),
                 profile = TRUE),
  gls_car1 = list(data = "car1", kind = "gls", cor = mk_cor(corCAR1, ~ time | subject),
                  profile = TRUE),
  gls_cs = list(data = "cs", kind = "gls", cor = mk_cor(corCompSymm, ~ 1 | subject),
                profile = TRUE),
  gls_un = list(data = "un", kind = "gls", cor = mk_cor(corSymm, ~ pos | subject), var = TRUE),
  gls_ar1h = list(data = "ar1h", kind = "gls", cor = mk_cor(corAR1, ~ wave | subject),
                  var = TRUE),
  lme_ri_ar1 = list(data = "ri_ar1", kind = "lme", random = ~ 1 | subject,
                    cor = mk_cor(corAR1, ~ wave | subject), profile = TRUE),
  lme_slope_ar1 = list(data = "slope_ar1", kind = "lme", random = ~ wave | subject,
                       cor = mk_cor(corAR1, ~ wave | subject)),
  lme_ri_het = list(data = "ri_ar1", kind = "lme", random = ~ 1 | subject, cor = NULL, var = TRUE)
)

# fit a case; `cor_value` fixes the correlation parameter, `sigma` fixes sigma, `form`
# replaces the fixed part (for the fixed-effect profiles)
fit_case <- function(cs, d, method, cor_value = NULL, sigma = NULL, form = F) {
  corr <- if (is.null(cs$cor)) NULL else cs$cor(cor_value)
  wts <- if (isTRUE(cs$var)) varIdent(form = ~ 1 | wave) else NULL
  if (cs$kind == "gls") {
    ctrl <- if (is.null(sigma)) gls_ctrl() else gls_ctrl(sigma = sigma)
    # the call holds the formula and structures themselves (emmeans and clubSandwich
    # re-evaluate it) and refers to the data as `d` (the same data in the global frame)
    eval(bquote(gls(.(form), data = d, correlation = .(corr), weights = .(wts),
                    method = .(method), control = .(ctrl))))
  } else {
    ctrl <- if (is.null(sigma)) lme_ctrl() else lme_ctrl(sigma = sigma)
    eval(bquote(lme(.(form), data = d, random = .(cs$random), correlation = .(corr),
                    weights = .(wts), method = .(method), control = .(ctrl))))
  }
}

sd_strata <- function(vs) {
  if (is.null(vs)) return(NULL)
  coef(vs, unconstrained = FALSE, allCoef = TRUE)
}

# ------------------------------------------------ dense deviance and cov(beta) in par
dense_funs <- function(fit, d, reml) {
  ms0 <- fit$modelStruct
  X <- model.matrix(F, d)
  y <- d$y
  n <- nrow(X)
  p <- ncol(X)
  is_lme <- inherits(fit, "lme")
  Z <- if (is_lme) model.matrix(formula(fit$modelStruct$reStruct[[1]]), d) else NULL
  idx <- split(seq_len(n), d$subject)
  k <- length(coef(ms0))
  pieces <- function(par) {
    ms <- ms0
    if (k) coef(ms) <- par[seq_len(k)]
    sigma <- exp(par[k + 1])
    cm <- if (is.null(ms$corStruct)) NULL else corMatrix(ms$corStruct)
    sds <- sd_strata(ms$varStruct)
    s_row <- if (is.null(sds)) rep(1, n) else unname(sds[as.character(d$wave)])
    Psi <- if (is_lme) pdMatrix(ms$reStruct)[[1]] * sigma^2 else NULL
    XVX <- matrix(0, p, p)
    XVy <- numeric(p)
    ld <- 0
    Vinv <- vector("list", length(idx))
    for (j in seq_along(idx)) {
      r <- idx[[j]]
      C <- if (is.null(cm)) diag(length(r)) else cm[[names(idx)[j]]]
      V <- sigma^2 * (s_row[r] %o% s_row[r]) * C
      if (is_lme) V <- V + Z[r, , drop = FALSE] %*% Psi %*% t(Z[r, , drop = FALSE])
      ch <- chol(V)
      ld <- ld + 2 * sum(log(diag(ch)))
      Vi <- chol2inv(ch)
      Vinv[[j]] <- Vi
      XVX <- XVX + t(X[r, , drop = FALSE]) %*% Vi %*% X[r, , drop = FALSE]
      XVy <- XVy + t(X[r, , drop = FALSE]) %*% Vi %*% y[r]
    }
    beta <- solve(XVX, XVy)
    e <- y - X %*% beta
    q <- 0
    for (j in seq_along(idx)) {
      r <- idx[[j]]
      q <- q + sum(e[r] * (Vinv[[j]] %*% e[r]))
    }
    list(ld = ld, q = q, XVX = XVX, beta = beta)
  }
  dev <- function(par) {
    pc <- pieces(par)
    out <- pc$ld + pc$q + n * log(2 * pi)
    if (reml) out <- out + as.numeric(determinant(pc$XVX)$modulus) - p * log(2 * pi)
    out
  }
  covb <- function(par) solve(pieces(par)$XVX)
  list(dev = dev, covb = covb, par = c(coef(ms0), lSigma = log(fit$sigma)), p = p, n = n)
}

satterthwaite_dense <- function(fit, d) {
  reml <- fit$method == "REML"
  f <- dense_funs(fit, d, reml)
  H <- numDeriv::hessian(f$dev, f$par)
  A <- 2 * solve(H)
  C <- f$covb(f$par)
  J <- numDeriv::jacobian(function(x) as.numeric(f$covb(x)), f$par)   # (p*p) x k
  p <- f$p
  df <- vapply(seq_len(p), function(i) {
    g <- J[(i - 1) * p + i, ]
    2 * C[i, i]^2 / as.numeric(t(g) %*% A %*% g)
  }, 0)
  list(par_names = I(names(f$par)), par = I(unname(f$par)), df = I(df),
       se = I(sqrt(diag(C))), check_logLik = -0.5 * f$dev(f$par), check_vcov = C,
       hessian = H)
}

emmeans_df <- function(fit, d) {
  set.seed(1)
  rg <- tryCatch(suppressMessages(ref_grid(fit, mode = "satterthwaite", data = d)),
                 error = function(e) NULL)
  if (is.null(rg)) return(rep(NA_real_, length(coef(fit))))
  p <- length(rg@bhat)
  vapply(seq_len(p), function(i) {
    L <- numeric(p)
    L[i] <- 1
    as.numeric(rg@dffun(L, rg@dfargs))
  }, 0)
}

params_of <- function(fit, d) {
  fe <- if (inherits(fit, "lme")) fixef(fit) else coef(fit)
  ms <- fit$modelStruct
  sds <- sd_strata(ms$varStruct)
  out <- list(fixef = I(unname(fe)), fixef_names = I(names(fe)),
              vcov = unname(as.matrix(vcov(fit))), logLik = as.numeric(logLik(fit)),
              sigma_nlme = fit$sigma)
  ref <- 1
  if (!is.null(sds)) {
    lv <- as.character(sort(as.numeric(names(sds))))
    ref <- sds[["0"]]
    out$sd_ratio <- I(unname(sds[lv] / ref))
  }
  out$sigma_ref <- fit$sigma * ref
  out$corr <- if (is.null(ms$corStruct)) I(numeric(0))
              else I(unname(coef(ms$corStruct, unconstrained = FALSE)))
  if (inherits(fit, "lme")) out$cov_re <- unname(matrix(as.numeric(getVarCov(fit)),
                                                       nrow(getVarCov(fit))))
  out
}

cr2_of <- function(fit, d) {
  cl <- d$subject
  V2 <- as.matrix(vcovCR(fit, cluster = cl, type = "CR2"))
  V0 <- as.matrix(vcovCR(fit, cluster = cl, type = "CR0"))
  ct <- coef_test(fit, vcov = "CR2", cluster = cl, test = "Satterthwaite")
  wt <- Wald_test(fit, constraints = constrain_zero(c(2, 4)), vcov = "CR2", cluster = cl,
                  test = "HTZ")
  list(vcov_CR2 = unname(V2), vcov_CR0 = unname(V0), SE = I(ct$SE), df_Satt = I(ct$df_Satt),
       p_Satt = I(ct$p_Satt),
       wald_HTZ = list(Fstat = wt$Fstat, delta = wt$delta, df_num = wt$df_num,
                       df_denom = wt$df_denom, p_val = wt$p_val))
}

# ----------------------------------------------------------- profile ends by refits
root_ends <- function(dev_of, est, step, lo = -Inf, hi = Inf, base) {
  cut <- qchisq(0.95, 1)
  g <- function(v) dev_of(v) - base - cut
  end <- function(dir) {
    bound <- if (dir < 0) lo else hi
    inside <- est
    v <- est + dir * step
    for (i in 1:60) {
      if (is.finite(bound) && dir * (v - bound) >= 0) v <- (inside + bound) / 2
      if (g(v) > 0) break
      inside <- v
      v <- est + dir * 2 * abs(v - est)
    }
    uniroot(g, sort(c(inside, v)), tol = 1e-10)$root
  }
  c(end(-1), end(1))
}

profile_of <- function(cs, d, fit) {
  base <- -2 * as.numeric(logLik(fit))
  out <- list()
  X <- model.matrix(F, d)
  se <- sqrt(diag(as.matrix(vcov(fit))))
  fe <- if (inherits(fit, "lme")) fixef(fit) else coef(fit)
  for (k in seq_len(ncol(X))) {
    dev_k <- function(v) {
      dd <- d
      dd$y_off <- d$y - v * X[, k]
      Xk <- X[, -k, drop = FALSE]
      colnames(Xk) <- paste0("x", seq_len(ncol(Xk)))
      dd <- cbind(dd, Xk)
      form <- as.formula(paste("y_off ~ 0 +", paste(colnames(Xk), collapse = " + ")))
      -2 * as.numeric(logLik(fit_case(cs, dd, "ML", form = form)))
    }
    out[[colnames(X)[k]]] <- I(root_ends(dev_k, fe[[k]], 2 * se[k], base = base))
  }
  corr <- coef(fit$modelStruct$corStruct, unconstrained = FALSE)
  if (!is.null(cs$cor) && length(corr) == 1) {
    lo <- if (inherits(fit$modelStruct$corStruct, "corCAR1")) 0 else -1
    if (inherits(fit$modelStruct$corStruct, "corCompSymm")) {
      lo <- -1 / (max(table(d$subject)) - 1)
    }
    dev_c <- function(v) -2 * as.numeric(logLik(fit_case(cs, d, "ML", cor_value = v)))
    out$corr <- I(root_ends(dev_c, corr[[1]], 0.05, lo = lo, hi = 1, base = base))
  }
  if (!isTRUE(cs$var) && cs$kind == "gls") {
    # (lme with lmeControl(sigma = v) reports a log-likelihood on another footing: 188 units
    # below logLik(fit) at v = sigma_hat on lme_ri_ar1, so no sigma profile for lme)
    dev_s <- function(v) -2 * as.numeric(logLik(fit_case(cs, d, "ML", sigma = v)))
    stopifnot(abs(dev_s(fit$sigma) - base) < 1e-6)
    out$sigma <- I(root_ends(dev_s, fit$sigma, 0.05 * fit$sigma, lo = 0, base = base))
  }
  out
}

# ------------------------------------------------------------------------- run
out <- list()
only <- commandArgs(trailingOnly = TRUE)
for (key in if (length(only)) only else names(cases)) {
  cs <- cases[[key]]
  d <- read_panel(cs$data)
  for (m in c("ML", "REML")) {
    fit <- fit_case(cs, d, m)
    entry <- list(data = paste0("panel_", cs$data, ".csv"), method = m,
                  model = paste(cs$kind, deparse(cs$random), deparse(cs$cor), "varIdent:",
                                isTRUE(cs$var)))
    entry$params <- params_of(fit, d)
    entry$satterthwaite <- satterthwaite_dense(fit, d)
    entry$emmeans_df <- I(emmeans_df(fit, d))
    entry$cr2 <- cr2_of(fit, d)
    if (m == "ML" && isTRUE(cs$profile)) entry$profile <- profile_of(cs, d, fit)
    out[[paste0(key, "_", m)]] <- entry
    cat(sprintf("%-20s logLik %.6f (dense %.6f) df %s | emmeans %s\n", paste0(key, "_", m),
                entry$params$logLik, entry$satterthwaite$check_logLik,
                paste(sprintf("%.3f", entry$satterthwaite$df), collapse = " "),
                paste(sprintf("%.3f", entry$emmeans_df), collapse = " ")))
    # written after every case (the unstructured refits are slow)
    if (!length(only)) write_json_full(out, file.path(here, "residual_inference_refs.json"))
  }
}
out$versions <- list(nlme = as.character(packageVersion("nlme")),
                     clubSandwich = as.character(packageVersion("clubSandwich")),
                     emmeans = as.character(packageVersion("emmeans")),
                     numDeriv = as.character(packageVersion("numDeriv")), R = r_version)
if (!length(only)) write_json_full(out, file.path(here, "residual_inference_refs.json"))

# nlme reference fits with structured residual covariances, for the sm_hlm tests.
#
# Run from the repository root (after `python -m validation.r.make_residual_data`):
#
#     Rscript validation/r/residual_nlme.R
#
# Reads validation/r/data/panel_*.csv (unbalanced panels from
# sm_hlm.simulate.simulate_panel, rows in random order, a `row` id column) and
# writes validation/r/residual_nlme.json.  The tests read the JSON; R is not
# needed at test time.
#
# Conventions
# * Each panel is sorted by (subject, wave) before fitting: nlme whitens the
#   rows of a group in data order, so its normalized residuals then use the
#   time order, as sm_hlm does.  Per-row outputs carry the CSV's `row` id.
# * corSymm needs integer positions 1..T: `pos = wave + 1`.
# * varIdent's reference stratum is the first one nlme meets; `sd_ratio` is
#   re-expressed relative to wave 0 (sm_hlm's reference: the first sorted level),
#   and `sigma_ref` = sigma * (nlme's ratio of wave 0) is the residual SD of
#   wave 0 -- sm_hlm's sigma.
# * REML log-likelihoods: nlme's REML logLik equals lme4's -REMLcrit/2 (both
#   include -0.5 log|X'V^-1 X|, neither adds +0.5 log|X'X|); the `convention`
#   entry checks this on a model both packages fit (random intercept, no
#   structure) and for gls against lm's logLik(REML = TRUE).
# * Tight controls (below) so that nlme reaches its optimum; the `*_limit`
#   case stops nlme after one iteration on purpose (returnObject = TRUE).
# * `iterations` counts nlminb's iterations (msVerbose trace lines);
#   `numIter` is gls's outer-iteration count (NULL for lme).
# * nlme's gls(method = "ML") vcov uses rss/(N - p) (its varBeta), so its SEs
#   are sqrt(N/(N - p)) times those from the ML sigma (lme's and sm_hlm's).
# * corCompSymm's normalized residuals use a Helmert-type factor, not the
#   Cholesky factor: only their per-subject sums of squares are comparable.
#
# Cases (keys `<case>_ML`, `<case>_REML`; fixed part y ~ wave * trt):
#   gls_ar1        panel_ar1.csv        gls, corAR1(~ wave | subject)
#   gls_car1       panel_car1.csv       gls, corCAR1(~ time | subject), irregular times
#   gls_un         panel_un.csv         gls, corSymm(~ pos | subject) + varIdent(~ 1 | wave)
#   gls_cs         panel_cs.csv         gls, corCompSymm(~ 1 | subject)
#   gls_ar1h       panel_ar1h.csv       gls, corAR1 + varIdent(~ 1 | wave)
#   lme_ri_ar1     panel_ri_ar1.csv     lme(~ 1 | subject), corAR1
#   lme_slope_ar1  panel_slope_ar1.csv  lme(~ wave | subject), corAR1
#   lme_ri_un      panel_ri_un.csv      lme(~ 1 | subject), corSymm + varIdent (a ridge: the
#                                       random intercept is confounded with the unstructured
#                                       covariance; `marginal_cov` is the identified 6 x 6
#                                       covariance by wave)
#   lme_slope_ar1_limit_ML              lme_slope_ar1 stopped after one iteration
#   convention                          REML logLik checks (above)
# Fields: logLik, AIC, BIC, df (parameter count), nobs, fixef (+ fixef_names), se,
# vcov, sigma, sigma_ref, corStruct {class, natural, unconstrained}, varStruct
# {class, natural_nlme}, sd_ratio (relative to wave 0), cov_re (lme), iterations,
# numIter, warnings, apVar_message, corStruct_intervals (intervals(which = "var-cov")),
# resid_normalized {row, value}, fitted {row, value}, nlme_version, R_version.

suppressPackageStartupMessages(library(nlme))
# lme4 and jsonlite, `here`, `data_dir`, `r_version` and the %.17g JSON writer
# `write_json_full()` (jsonlite prints only 15 significant digits)
source(file.path("validation", "r", "common.R"))
nlme_version <- as.character(packageVersion("nlme"))

# ----------------------------------------------------------------- helpers
read_panel <- function(name) {
  d <- read.csv(file.path(data_dir, paste0("panel_", name, ".csv")))
  d <- d[order(d$subject, d$wave), ]
  d$pos <- as.integer(d$wave + 1L)
  d$subject <- factor(d$subject)
  d
}

gls_ctrl <- glsControl(maxIter = 500, msMaxIter = 1000, tolerance = 1e-10, msVerbose = TRUE)
lme_ctrl <- lmeControl(maxIter = 500, msMaxIter = 1000, msMaxEval = 5000, niterEM = 50,
                       tolerance = 1e-10, msVerbose = TRUE)
lme_limit <- lmeControl(maxIter = 1, msMaxIter = 1, niterEM = 0, returnObject = TRUE,
                        msVerbose = TRUE)

# evaluate a fit, capturing warnings and nlminb's trace (one line per iteration)
run_fit <- function(expr) {
  warns <- character(0)
  out <- capture.output(fit <- withCallingHandlers(expr, warning = function(w) {
    warns <<- c(warns, conditionMessage(w))
    invokeRestart("muffleWarning")
  }))
  iters <- sum(grepl("^\\s*[0-9]+:", out))
  list(fit = fit, warnings = warns, iterations = iters)
}

struct_coefs <- function(st) {
  if (is.null(st)) return(NULL)
  list(class = class(st)[1],
       natural = as.list(coef(st, unconstrained = FALSE)),
       unconstrained = as.list(coef(st, unconstrained = TRUE)))
}

describe <- function(res, case) {
  fit <- res$fit
  fe <- fixef_any(fit)
  V <- as.matrix(vcov(fit))[names(fe), names(fe), drop = FALSE]
  ms <- fit$modelStruct
  out <- list(
    data = case$data, model = case$label, call = paste(deparse(fit$call), collapse = " "),
    REML = fit$method == "REML", method = fit$method,
    logLik = as.numeric(logLik(fit)), AIC = AIC(fit), BIC = BIC(fit),
    df = attr(logLik(fit), "df"), nobs = nrow(case$d),
    fixef = as.list(fe), fixef_names = I(names(fe)), se = I(unname(sqrt(diag(V)))), vcov = V,
    sigma = fit$sigma,
    corStruct = struct_coefs(ms$corStruct),
    iterations = res$iterations, numIter = if (is.null(fit$numIter)) NULL else fit$numIter,
    warnings = I(res$warnings),
    apVar_message = if (is.character(fit$apVar)) fit$apVar else "",
    nlme_version = nlme_version, R_version = r_version
  )
  vs <- ms$varStruct
  if (!is.null(vs)) {
    all <- coef(vs, unconstrained = FALSE, allCoef = TRUE)
    ref <- all[["0"]]
    lv <- as.character(sort(as.numeric(names(all))))
    out$varStruct <- list(class = class(vs)[1], natural_nlme = as.list(all))
    out$sd_ratio <- as.list(setNames(unname(all[lv] / ref), lv))
    out$sigma_ref <- fit$sigma * ref
  } else {
    out$sigma_ref <- fit$sigma
  }
  if (inherits(fit, "lme")) {
    vc <- getVarCov(fit)
    out$cov_re <- matrix(as.numeric(vc), nrow(vc))
    out$cov_re_names <- I(colnames(vc))
  }
  # intervals of the structure parameters (on nlme's unconstrained scale)
  iv <- tryCatch(intervals(fit, which = "var-cov"), error = function(e) NULL)
  if (!is.null(iv) && !is.null(iv$corStruct)) {
    out$corStruct_intervals <- lapply(seq_len(nrow(iv$corStruct)), function(i)
      list(name = rownames(iv$corStruct)[i], lower = iv$corStruct[i, 1],
           est = iv$corStruct[i, 2], upper = iv$corStruct[i, 3]))
  }
  # normalized residuals (lme: level 1, i.e. y - X beta - Z b), with row ids
  rn <- if (inherits(fit, "lme")) residuals(fit, type = "normalized", level = 1)
        else residuals(fit, type = "normalized")
  out$resid_normalized <- list(row = I(case$d$row), value = I(unname(as.numeric(rn))))
  out$fitted <- list(row = I(case$d$row), value = I(unname(as.numeric(fitted(fit)))))
  out
}

fixef_any <- function(fit) if (inherits(fit, "lme")) fixef(fit) else coef(fit)

# the full 6 x 6 marginal covariance by wave of a random intercept + corSymm/varIdent fit
marginal_un <- function(fit) {
  cs <- fit$modelStruct$corStruct
  r <- coef(cs, unconstrained = FALSE)
  T <- 6
  C <- diag(T)
  C[lower.tri(C)] <- r
  C <- C + t(C) - diag(T)
  all <- coef(fit$modelStruct$varStruct, unconstrained = FALSE, allCoef = TRUE)
  s <- all[as.character(0:5)]
  psi <- as.numeric(getVarCov(fit))[1]
  psi + fit$sigma^2 * diag(s) %*% C %*% diag(s)
}

# ------------------------------------------------------------------- cases
F <- y ~ wave * trt
cases <- list(
  list(key = "gls_ar1", data = "ar1", label = "gls + corAR1(~ wave | subject)",
       fit = function(d, m) gls(F, d, correlation = corAR1(form = ~ wave | subject),
                                method = m, control = gls_ctrl)),
  list(key = "gls_car1", data = "car1", label = "gls + corCAR1(~ time | subject)",
       fit = function(d, m) gls(F, d, correlation = corCAR1(form = ~ time | subject),
                                method = m, control = gls_ctrl)),
  list(key = "gls_un", data = "un", label = "gls + corSymm(~ pos | subject) + varIdent(~ 1 | wave)",
       fit = function(d, m) gls(F, d, correlation = corSymm(form = ~ pos | subject),
                                weights = varIdent(form = ~ 1 | wave), method = m,
                                control = gls_ctrl)),
  list(key = "gls_cs", data = "cs", label = "gls + corCompSymm(~ 1 | subject)",
       fit = function(d, m) gls(F, d, correlation = corCompSymm(form = ~ 1 | subject),
                                method = m, control = gls_ctrl)),
  list(key = "gls_ar1h", data = "ar1h", label = "gls + corAR1(~ wave | subject) + varIdent(~ 1 | wave)",
       fit = function(d, m) gls(F, d, correlation = corAR1(form = ~ wave | subject),
                                weights = varIdent(form = ~ 1 | wave), method = m,
                                control = gls_ctrl)),
  list(key = "lme_ri_ar1", data = "ri_ar1", label = "lme(~ 1 | subject) + corAR1(~ wave | subject)",
       fit = function(d, m) lme(F, d, random = ~ 1 | subject,
                                correlation = corAR1(form = ~ wave | subject), method = m,
                                control = lme_ctrl)),
  list(key = "lme_slope_ar1", data = "slope_ar1",
       label = "lme(~ wave | subject) + corAR1(~ wave | subject)",
       fit = function(d, m) lme(F, d, random = ~ wave | subject,
                                correlation = corAR1(form = ~ wave | subject), method = m,
                                control = lme_ctrl)),
  list(key = "lme_ri_un", data = "ri_un",
       label = "lme(~ 1 | subject) + corSymm(~ pos | subject) + varIdent(~ 1 | wave)",
       fit = function(d, m) lme(F, d, random = ~ 1 | subject,
                                correlation = corSymm(form = ~ pos | subject),
                                weights = varIdent(form = ~ 1 | wave), method = m,
                                control = lme_ctrl)),
  list(key = "lme_slope_ar1_limit", data = "slope_ar1",
       label = "lme(~ wave | subject) + corAR1(~ wave | subject), stopped after 1 iteration",
       methods = "ML",
       fit = function(d, m) lme(F, d, random = ~ wave | subject,
                                correlation = corAR1(form = ~ wave | subject), method = m,
                                control = lme_limit))
)

out <- list()
for (cs in cases) {
  d <- read_panel(cs$data)
  methods <- if (is.null(cs$methods)) c("ML", "REML") else cs$methods
  for (m in methods) {
    key <- paste0(cs$key, "_", m)
    case <- list(data = paste0("panel_", cs$data, ".csv"), label = cs$label, d = d)
    res <- run_fit(cs$fit(d, m))
    desc <- describe(res, case)
    if (cs$key == "lme_ri_un") desc$marginal_cov <- marginal_un(res$fit)
    out[[key]] <- desc
    cat(sprintf("%-26s logLik=%.6f iterations=%d warnings=%d\n", key, desc$logLik,
                desc$iterations, length(res$warnings)))
    for (w in res$warnings) cat("    ", w, "\n")
  }
}

# ------------------------------------------------- REML convention checks
d <- read_panel("ri_ar1")
ri_nlme <- lme(F, d, random = ~ 1 | subject, method = "REML",
               control = lmeControl(maxIter = 500, msMaxIter = 1000, tolerance = 1e-10))
ri_lme4 <- lmer(y ~ wave * trt + (1 | subject), d, REML = TRUE)
gls0 <- gls(F, d, method = "REML")
lm0 <- lm(F, d)
X <- model.matrix(F, d)
out$convention <- list(
  data = "panel_ri_ar1.csv",
  note = paste("REML logLik of nlme::lme and lme4::lmer (random intercept, no structure) and of",
               "nlme::gls and lm(REML = TRUE) (no random effects); half_logdet_XtX is",
               "0.5 log|X'X|, the term by which conventions could differ"),
  lme_REML_logLik = as.numeric(logLik(ri_nlme)),
  lmer_REML_logLik = as.numeric(logLik(ri_lme4)),
  gls_REML_logLik = as.numeric(logLik(gls0)),
  lm_REML_logLik = as.numeric(logLik(lm0, REML = TRUE)),
  half_logdet_XtX = 0.5 * as.numeric(determinant(crossprod(X))$modulus)
)
cat(sprintf("convention: lme %.8f lmer %.8f gls %.8f lm %.8f\n", out$convention$lme_REML_logLik,
            out$convention$lmer_REML_logLik, out$convention$gls_REML_logLik,
            out$convention$lm_REML_logLik))

write_json_full(out, file.path(here, "residual_nlme.json"))
cat("nlme", nlme_version, "\n")

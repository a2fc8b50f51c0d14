# lme4 reference fits for the sm_hlm test suite.
#
# Run from the repository root (after `python -m validation.r.make_core_data`):
#
#     Rscript validation/r/core_lme4.R
#
# Writes validation/r/core_lme4.json (simulated data sets in validation/r/data/)
# and validation/r/nels_lme4.json (../shared/data/nels.csv).  Tests read the
# JSON files; R is not needed at test time.
#
# Precision: jsonlite::toJSON/write_json print at most 15 significant digits
# even with digits = NA (e.g. 1/3 -> 0.333333333333333), which does not round-
# trip an IEEE double.  The scripts therefore use their own small JSON writer
# (to_json in common.R) that prints every double with sprintf("%.17g"), which
# does round-trip; jsonlite is used only to escape strings.
#
# Field conventions (see README.md for the full list):
# * matrices are lists of rows; `vcov`, `se`, `tvalues` are ordered as `fixef`.
# * `deviance` is deviance(fit) for ML fits and REMLcrit(fit) for REML fits.
# * `ranef` is a list of rows {"group": id, "<coef>": value, ...}, one per
#   level of the grouping factor, in factor-level order.
# * `condvar` is {"names": [...], "group": [ids], "cov": [G x q x q]} with the
#   conditional covariance matrix of each group's BLUPs from lme4's
#   attr(ranef(fit, condVar = TRUE)[[1]], "postVar").  For the two-term case
#   indep_diag (y ~ x + (1 | group) + (0 + x | group)) lme4 returns one postVar
#   array per term; they are COMBINED AS A BLOCK-DIAGONAL matrix per group
#   (names "(Intercept)", "x").  NB: the zero off-diagonals are an lme4
#   convention, not the true conditional covariance, which is not diagonal.
# * `condvar_full` has the same layout but is computed here directly as
#   sigma^2 * Lambda (Lambda' Z' Z Lambda + I)^{-1} Lambda' (conditional on
#   theta and beta-hat, the same quantity lme4's postVar uses) restricted to
#   each group's coefficients, so it includes the cross-term covariances for
#   indep_diag.  For single-term cases it equals `condvar` to rounding error;
#   `condvar_maxabsdiff` records max |condvar_full - condvar| over the
#   blocks lme4 reports (the diagonal blocks per term).
# * `warnings` / `messages` hold any warning()/message() raised by lmer()
#   (e.g. "boundary (singular) fit: see help('isSingular')"), and
#   `conv_messages` holds fit@optinfo$conv$lme4$messages.

# Shared helpers (attaches lme4 and jsonlite; paths, %.17g JSON writer, data
# readers): common.R, next to this script.
local({
  arg <- grep("^--file=", commandArgs(trailingOnly = FALSE), value = TRUE)
  dir <- if (length(arg)) dirname(sub("^--file=", "", arg[1])) else "validation/r"
  source(file.path(dir, "common.R"))
})

# ----------------------------------------------------------------- helpers
fit_lmer <- function(formula, data, REML) {
  r <- capture(lmer(formula, data = data, REML = REML))
  list(fit = r$value, warnings = r$warnings, messages = r$messages)
}

# Joint conditional covariance of all BLUPs: sigma^2 Lambda (Lambda'Z'Z Lambda + I)^{-1} Lambda'
full_condvar <- function(fit) {
  Lt <- getME(fit, "Lambdat")
  Zt <- getME(fit, "Zt")
  LZt <- Lt %*% Zt
  A <- as.matrix(tcrossprod(LZt)) + diag(nrow(Lt))
  Lam <- as.matrix(t(Lt))
  sigma(fit)^2 * Lam %*% solve(A, t(Lam))
}

# Indices into b of each level's coefficients (single grouping factor assumed)
group_index <- function(fit) {
  cnms <- getME(fit, "cnms")
  Gp <- getME(fit, "Gp")
  flist <- getME(fit, "flist")
  asgn <- attr(flist, "assign")
  stopifnot(length(flist) == 1)
  nl <- nlevels(flist[[1]])
  idx <- lapply(seq_len(nl), function(l) {
    unlist(lapply(seq_along(cnms), function(i) {
      nc <- length(cnms[[i]])
      Gp[i] + (l - 1) * nc + seq_len(nc)
    }))
  })
  list(idx = idx, names = unlist(cnms, use.names = FALSE),
       levels = levels(flist[[1]]), term_sizes = lengths(cnms))
}

# Block-diagonal combination of lme4's postVar (array or list of arrays per term)
lme4_condvar <- function(pv, G) {
  if (!is.list(pv)) pv <- list(pv)
  sizes <- vapply(pv, function(a) dim(a)[1], 0L)
  q <- sum(sizes)
  offs <- c(0, cumsum(sizes))
  lapply(seq_len(G), function(g) {
    m <- matrix(0, q, q)
    for (t in seq_along(pv)) {
      ii <- offs[t] + seq_len(sizes[t])
      m[ii, ii] <- pv[[t]][, , g]
    }
    m
  })
}

describe_fit <- function(res, data_name, formula_str, REML, n_ranef = NULL,
                         include_fitted = TRUE) {
  fit <- res$fit
  fe <- fixef(fit)
  V <- as.matrix(vcov(fit))
  V <- V[names(fe), names(fe), drop = FALSE]
  se <- sqrt(diag(V))
  vc <- VarCorr(fit)
  flist <- getME(fit, "flist")
  grp_of_term <- names(flist)[attr(flist, "assign")]
  varcorr <- lapply(seq_along(vc), function(i) {
    m <- vc[[i]]
    cm <- unclass(m)
    attributes(cm) <- list(dim = dim(m))
    list(group = grp_of_term[i], term = names(vc)[i],
         names = I(colnames(m)), cov = cm,
         sd = I(unname(attr(m, "stddev"))),
         corr = { cc <- attr(m, "correlation"); attributes(cc) <- list(dim = dim(m)); cc })
  })
  q <- quantile(residuals(fit, scaled = TRUE))
  names(q) <- c("Min", "1Q", "Median", "3Q", "Max")
  out <- list(
    data = data_name,
    formula = formula_str,
    REML = REML,
    logLik = as.numeric(logLik(fit)),
    deviance = if (REML) REMLcrit(fit) else deviance(fit),
    AIC = AIC(fit),
    BIC = BIC(fit),
    df_resid = df.residual(fit),
    nobs = nobs(fit),
    ngrps = as.list(ngrps(fit)),
    fixef = as.list(fe),
    fixef_names = I(names(fe)),
    vcov = V,
    se = I(unname(se)),
    tvalues = I(unname(fe / se)),
    sigma = sigma(fit),
    varcorr = varcorr,
    theta = as.list(getME(fit, "theta")),
    isSingular = isSingular(fit),
    optimizer = fit@optinfo$optimizer,
    feval = fit@optinfo$feval,
    warnings = I(res$warnings),
    messages = I(res$messages),
    conv_messages = I(as.character(unlist(fit@optinfo$conv$lme4$messages))),
    lme4_version = lme4_version,
    R_version = r_version
  )

  # BLUPs and their conditional variances
  re <- ranef(fit, condVar = TRUE)
  stopifnot(length(re) == 1)
  rdf <- re[[1]]
  gi <- group_index(fit)
  stopifnot(identical(gi$levels, rownames(rdf)), identical(gi$names, colnames(rdf)))
  G <- nrow(rdf)
  ids <- level_ids(rownames(rdf))
  cv <- lme4_condvar(attr(rdf, "postVar"), G)
  Vb <- full_condvar(fit)
  cv_full <- lapply(gi$idx, function(ii) Vb[ii, ii, drop = FALSE])
  # compare on the blocks that lme4 reports
  offs <- c(0, cumsum(gi$term_sizes))
  mask <- matrix(FALSE, length(gi$names), length(gi$names))
  for (t in seq_along(gi$term_sizes)) {
    ii <- offs[t] + seq_len(gi$term_sizes[t])
    mask[ii, ii] <- TRUE
  }
  out$condvar_maxabsdiff <- max(vapply(seq_len(G), function(g)
    max(abs((cv_full[[g]] - cv[[g]])[mask])), 0))
  # also check the BLUPs themselves against b = Lambda u
  b <- as.vector(getME(fit, "b"))
  out$ranef_maxabsdiff_b <- max(vapply(seq_len(G), function(g)
    max(abs(b[gi$idx[[g]]] - unlist(rdf[g, ]))), 0))

  keep <- if (is.null(n_ranef)) seq_len(G) else seq_len(min(n_ranef, G))
  out$ranef <- lapply(keep, function(g) {
    row <- list(group = ids[g])
    for (nm in colnames(rdf)) row[[nm]] <- rdf[g, nm]
    row
  })
  pack <- function(mats) list(names = I(gi$names), group = I(ids[keep]),
                              cov = lapply(mats[keep], function(m) lapply(seq_len(nrow(m)),
                                function(i) I(unname(m[i, ])))))
  out$condvar <- pack(cv)
  out$condvar_full <- pack(cv_full)
  if (!is.null(n_ranef)) out$ranef_note <- sprintf("first %d groups (factor-level order) only", length(keep))

  if (include_fitted) out$fitted <- I(unname(fitted(fit)))
  out$resid_scaled_quantiles <- as.list(q)
  out
}

# -------------------------------------------------------- simulated data sets
cases <- list(
  list(key = "ri", data = "ri.csv", formula = "y ~ x + z + (1 | group)"),
  list(key = "slope", data = "slope.csv", formula = "y ~ x * z + (x | group)"),
  list(key = "indep_diag", data = "indep.csv", formula = "y ~ x + (1 | group) + (0 + x | group)"),
  list(key = "indep_corr", data = "indep.csv", formula = "y ~ x + (x | group)"),
  list(key = "nearsing", data = "nearsing.csv", formula = "y ~ x + (x | group)"),
  list(key = "three", data = "three.csv", formula = "y ~ x + z + (x + z | group)")
)

core <- list()
for (cs in cases) {
  d <- read_sim(cs$data)
  for (REML in c(FALSE, TRUE)) {
    key <- paste0(cs$key, if (REML) "_REML" else "_ML")
    res <- fit_lmer(as.formula(cs$formula), d, REML)
    core[[key]] <- describe_fit(res, cs$data, cs$formula, REML)
    cat(sprintf("%-16s logLik=%.6f singular=%s feval=%d warnings=%d messages=%d\n", key,
                core[[key]]$logLik, core[[key]]$isSingular, core[[key]]$feval,
                length(res$warnings), length(res$messages)))
    for (w in c(res$warnings, res$messages)) cat("    ", w, "\n")
  }
}
write_json_full(core, file.path(here, "core_lme4.json"))

# ------------------------------------------------------------------- NELS
nels <- read_nels()
nels_cases <- lapply(names(nels_formulas), function(k)
  list(key = k, formula = nels_formulas[[k]]))
nels_out <- list()
for (cs in nels_cases) {
  for (REML in c(FALSE, TRUE)) {
    key <- paste0(cs$key, if (REML) "_REML" else "_ML")
    f <- as.formula(cs$formula)
    res <- fit_lmer(f, nels, REML)
    out <- describe_fit(res, "../shared/data/nels.csv", cs$formula, REML,
                        n_ranef = 5, include_fitted = FALSE)
    times <- vapply(1:5, function(i)
      suppressMessages(suppressWarnings(system.time(lmer(f, data = nels, REML = REML))[["elapsed"]])), 0)
    out$time_median_s <- median(times)
    out$time_runs_s <- I(times)
    nels_out[[key]] <- out
    cat(sprintf("%-12s logLik=%.6f singular=%s feval=%d time=%.3fs warnings=%d messages=%d\n", key,
                out$logLik, out$isSingular, out$feval, out$time_median_s,
                length(res$warnings), length(res$messages)))
    for (w in c(res$warnings, res$messages)) cat("    ", w, "\n")
  }
}
write_json_full(nels_out, file.path(here, "nels_lme4.json"))
cat("lme4", lme4_version, "\n")

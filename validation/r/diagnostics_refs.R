# Reference values for sm_hlm.diagnostics (ICC, R^2, reliability, shrinkage).
#
# Run from the repository root:
#
#     Rscript validation/r/diagnostics_refs.R
#
# Writes validation/r/diagnostics_refs.json.  Needs lme4 and jsonlite, and
# uses performance/insight when installed (Debian: r-cran-performance) to
# cross-check the hand formulas; the tests compare against the hand formulas.
#
# Fits (ML, default lmerControl()):
#   NELS (../shared/data/nels.csv, school as a factor)
#     fit.0  mscore ~ 1 + (1 | school)
#     fit.1  mscore ~ ses + (ses | school)
#     fit.2  mscore ~ flp + ses + flp * ses + (ses | school)
#   simulated (validation/r/data/*.csv, see core_lme4.R)
#     ri, slope, indep_diag, three
#
# Formulas (Nakagawa & Schielzeth 2013; Johnson 2014; Nakagawa, Johnson &
# Schielzeth 2017), computed here from lme4's estimates:
#   var_fixed    = var(X beta)                 (R's var(): denominator n - 1,
#                                               as insight::get_variance)
#   var_random   = mean_i z_i' Psi z_i = tr(Z Psi Z') / n
#   var_residual = sigma^2
#   R2_marginal    = var_fixed / (var_fixed + var_random + var_residual)
#   R2_conditional = (var_fixed + var_random) / (same)
#   ICC_adjusted   = var_random / (var_random + var_residual)
#   ICC_unadjusted = var_random / (var_fixed + var_random + var_residual)
# Reliability of group j's OLS coefficient k (Raudenbush & Bryk 2002, 3.59):
#   lambda_jk = Psi_kk / (Psi_kk + sigma^2 [(Z_j'Z_j)^{-1}]_kk)
# computed from each group's lm.fit of y on Z (aliased coefficients NA, and
# the others from the reduced fit, as lm does).  Shrinkage weights:
#   W_j = Psi (Z_j'Z_j Psi + sigma^2 I)^{-1} Z_j'Z_j
#       (= Psi (Psi + sigma^2 (Z_j'Z_j)^{-1})^{-1} when Z_j'Z_j is invertible;
#        `shrinkage_textbook_maxabsdiff` checks that on the full-rank groups)
#
# Numbers are printed with %.17g (round-trip doubles).

# Shared helpers (attaches lme4 and jsonlite; paths, %.17g JSON writer, data
# readers): common.R, next to this script.
local({
  arg <- grep("^--file=", commandArgs(trailingOnly = FALSE), value = TRUE)
  dir <- if (length(arg)) dirname(sub("^--file=", "", arg[1])) else "validation/r"
  source(file.path(dir, "common.R"))
})
have_perf <- suppressWarnings(requireNamespace("performance", quietly = TRUE) &&
                              requireNamespace("insight", quietly = TRUE))

# ----------------------------------------------------------------- helpers
# The full random-effects covariance Psi (block diagonal over terms), named
full_psi <- function(fit) {
  vc <- VarCorr(fit)
  nms <- unlist(lapply(vc, colnames), use.names = FALSE)
  q <- length(nms)
  Psi <- matrix(0, q, q, dimnames = list(nms, nms))
  off <- 0
  for (m in vc) {
    k <- ncol(m)
    ii <- off + seq_len(k)
    Psi[ii, ii] <- unclass(m)[seq_len(k), seq_len(k)]
    off <- off + k
  }
  Psi
}

diagnostics_for <- function(fit, data_name, formula_str) {
  stopifnot(length(getME(fit, "flist")) == 1)
  X <- getME(fit, "X")
  beta <- fixef(fit)
  Z <- do.call(cbind, getME(fit, "mmList"))       # n x q, the random-effects design
  Psi <- full_psi(fit)
  stopifnot(identical(colnames(Z), colnames(Psi)))
  s2 <- sigma(fit)^2
  n <- nrow(X)
  eta <- as.vector(X %*% beta)
  var_fixed <- var(eta)
  var_random <- mean(rowSums((Z %*% Psi) * Z))
  var_residual <- s2
  tot <- var_fixed + var_random + var_residual
  out <- list(
    data = data_name, formula = formula_str, REML = FALSE,
    nobs = n, fixef = as.list(beta), cov_re = Psi, re_names = I(colnames(Psi)), sigma2 = s2,
    var_fixed = var_fixed, var_fixed_popvar = var_fixed * (n - 1) / n,
    var_random = var_random, var_residual = var_residual,
    R2_marginal = var_fixed / tot, R2_conditional = (var_fixed + var_random) / tot,
    ICC_adjusted = var_random / (var_random + var_residual),
    ICC_unadjusted = var_random / tot
  )
  if (have_perf) {
    iv <- insight::get_variance(fit)
    ic <- performance::icc(fit)
    r2 <- performance::r2_nakagawa(fit)
    out$performance <- list(
      version = as.character(packageVersion("performance")),
      insight_version = as.character(packageVersion("insight")),
      var_fixed = iv$var.fixed, var_random = iv$var.random, var_residual = iv$var.residual,
      ICC_adjusted = ic$ICC_adjusted, ICC_unadjusted = ic$ICC_unadjusted,
      R2_marginal = unname(r2$R2_marginal), R2_conditional = unname(r2$R2_conditional))
  }

  # per-group OLS reliabilities and shrinkage weights
  g <- getME(fit, "flist")[[1]]
  lv <- levels(g)
  y <- getME(fit, "y")
  q <- ncol(Z)
  rel <- matrix(NA_real_, length(lv), q)
  shr <- matrix(NA_real_, length(lv), q)
  shr_tb <- matrix(NA_real_, length(lv), q)
  for (l in seq_along(lv)) {
    ii <- which(g == lv[l])
    Zj <- Z[ii, , drop = FALSE]
    A <- crossprod(Zj)
    W <- Psi %*% solve(A %*% Psi + s2 * diag(q)) %*% A
    shr[l, ] <- diag(W)
    lf <- lm.fit(Zj, y[ii])
    r <- lf$rank
    piv <- lf$qr$pivot[seq_len(r)]
    Ainv <- chol2inv(lf$qr$qr[seq_len(r), seq_len(r), drop = FALSE])
    rel[l, piv] <- diag(Psi)[piv] / (diag(Psi)[piv] + s2 * diag(Ainv))
    if (r == q) shr_tb[l, ] <- diag(Psi %*% solve(Psi + s2 * solve(A)))
  }
  colnames(rel) <- colnames(shr) <- colnames(Psi)
  out$group <- I(level_ids(lv))
  out$group_size <- I(as.vector(table(g)))
  out$reliability <- rel
  out$mean_reliability <- as.list(colMeans(rel, na.rm = TRUE))
  out$n_reliability <- as.list(colSums(!is.na(rel)))
  out$shrinkage_diag <- shr
  out$shrinkage_textbook_maxabsdiff <- max(abs(shr - shr_tb), na.rm = TRUE)
  out$lme4_version <- lme4_version
  out$R_version <- r_version
  out
}

# -------------------------------------------------------------------- fits
refs <- list()
nels <- read_nels()
for (key in names(nels_formulas)) {
  f <- nels_formulas[[key]]
  fit <- lmer(as.formula(f), data = nels, REML = FALSE)
  refs[[paste0(key, "_ML")]] <- diagnostics_for(fit, nels_path, f)
}

sim_cases <- list(
  ri = c("ri.csv", "y ~ x + z + (1 | group)"),
  slope = c("slope.csv", "y ~ x * z + (x | group)"),
  indep_diag = c("indep.csv", "y ~ x + (1 | group) + (0 + x | group)"),
  three = c("three.csv", "y ~ x + z + (x + z | group)")
)
for (key in names(sim_cases)) {
  d <- read_sim(sim_cases[[key]][1])
  fit <- lmer(as.formula(sim_cases[[key]][2]), data = d, REML = FALSE)
  refs[[paste0(key, "_ML")]] <- diagnostics_for(fit, sim_cases[[key]][1], sim_cases[[key]][2])
}

for (k in names(refs)) {
  r <- refs[[k]]
  cat(sprintf("%-14s R2m=%.6f R2c=%.6f ICCadj=%.6f", k, r$R2_marginal, r$R2_conditional,
              r$ICC_adjusted))
  if (!is.null(r$performance)) {
    p <- r$performance
    cat(sprintf("  | performance: R2m=%.6f R2c=%.6f ICCadj=%.6f", p$R2_marginal,
                p$R2_conditional, p$ICC_adjusted))
  }
  cat(sprintf("  shrink-textbook diff=%.2g\n", r$shrinkage_textbook_maxabsdiff))
}

write_json_full(refs, file.path(here, "diagnostics_refs.json"))

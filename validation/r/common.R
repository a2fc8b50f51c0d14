# Helpers shared by the R reference scripts in validation/r/
# (core_lme4.R, compare_lme4.R, diagnostics_refs.R, inference_refs.R; also
# sourced by residual_nlme.R).
#
# Not run on its own: each script sources it from its own folder, e.g.
#
#     source(file.path(script_dir, "common.R"))
#
# Paths below are relative to the repository root, which is where the scripts
# are run from (`Rscript validation/r/<name>.R`).
#
# Attaches lme4 and jsonlite, and defines: `here`, `data_dir`, `nels_path`,
# `lme4_version`, `r_version`; the JSON writer `to_json()` /
# `write_json_full()`; `read_nels()`, `read_sim()`, `nels_formulas`;
# `capture()` (collect warnings/messages), `level_ids()` and `ranef_json()`.
#
# Precision: jsonlite::toJSON/write_json print at most 15 significant digits
# even with digits = NA (e.g. 1/3 -> 0.333333333333333), which does not round-
# trip an IEEE double.  The JSON writer below therefore prints every double
# with sprintf("%.17g"), which does round-trip; jsonlite is used only to escape
# strings and to check that the written file parses.

suppressPackageStartupMessages({
  library(lme4)
  library(jsonlite)
})

# ------------------------------------------------------------------ paths
here <- "validation/r"                       # where the JSON files are written
data_dir <- file.path(here, "data")          # simulated data (make_core_data.py)
nels_path <- "../shared/data/nels.csv"       # also recorded in the JSON as is

lme4_version <- as.character(packageVersion("lme4"))
r_version <- R.version.string

# ---------------------------------------------------------------- JSON writer
# Conventions: NA / NaN / Inf -> null; a named list or named atomic vector ->
# object; an unnamed length-1 atomic vector -> scalar, wrap it in I() to keep
# it an array; a matrix -> list of rows; data frames are rejected.
num_str <- function(x) {
  out <- sprintf("%.17g", x)
  out[is.na(x) | !is.finite(x)] <- "null"
  out
}

scalar_strs <- function(x) {
  if (is.factor(x)) x <- as.character(x)
  if (is.logical(x)) return(ifelse(is.na(x), "null", ifelse(x, "true", "false")))
  if (is.integer(x)) return(ifelse(is.na(x), "null", as.character(x)))
  if (is.numeric(x)) return(num_str(as.double(x)))
  if (is.character(x)) {
    return(vapply(x, function(s) if (is.na(s)) "null" else
      as.character(jsonlite::toJSON(s, auto_unbox = TRUE)), ""))
  }
  stop("unsupported type: ", class(x)[1])
}

to_json <- function(x, indent = 0) {
  pad <- strrep("  ", indent + 1)
  pad0 <- strrep("  ", indent)
  if (is.null(x)) return("null")
  if (is.data.frame(x)) stop("convert data frames to lists of rows first")
  if (is.matrix(x)) {
    rows <- vapply(seq_len(nrow(x)), function(i)
      paste0("[", paste(scalar_strs(unname(x[i, ])), collapse = ", "), "]"), "")
    if (length(rows) == 0) return("[]")
    return(paste0("[\n", pad, paste(rows, collapse = paste0(",\n", pad)), "\n", pad0, "]"))
  }
  if (is.atomic(x)) {
    keep_array <- inherits(x, "AsIs") || length(x) != 1
    if (!is.null(names(x)) && !inherits(x, "AsIs")) {
      # named atomic vector -> object
      x <- as.list(x)
    } else {
      s <- scalar_strs(unclass(unname(x)))
      if (!keep_array) return(s)
      return(paste0("[", paste(s, collapse = ", "), "]"))
    }
  }
  if (is.list(x)) {
    if (length(x) == 0) return(if (is.null(names(x))) "[]" else "{}")
    vals <- vapply(x, function(v) to_json(v, indent + 1), "")
    if (!is.null(names(x))) {
      keys <- scalar_strs(names(x))
      items <- paste0(keys, ": ", vals)
      return(paste0("{\n", pad, paste(items, collapse = paste0(",\n", pad)), "\n", pad0, "}"))
    }
    return(paste0("[\n", pad, paste(vals, collapse = paste0(",\n", pad)), "\n", pad0, "]"))
  }
  stop("unsupported object: ", class(x)[1])
}

write_json_full <- function(x, path) {
  writeLines(to_json(x), path, useBytes = TRUE)
  # sanity check: the file parses
  invisible(jsonlite::fromJSON(path, simplifyVector = FALSE))
}

# ------------------------------------------------------------------- data
# NELS: ../shared/data/nels.csv with `school` as a factor
read_nels <- function() {
  d <- read.csv(nels_path)
  d$school <- factor(d$school)
  d
}

# Simulated data set validation/r/data/<name>: integer `group` ids -> factor
# with levels in numeric order
read_sim <- function(name) {
  d <- read.csv(file.path(data_dir, name))
  d$group <- factor(d$group)
  d
}

# The NELS models of the notes (fitted by core_lme4.R, compare_lme4.R and
# diagnostics_refs.R; inference_refs.R spells fit.2 as `flp*ses`)
nels_formulas <- c(
  fit.0 = "mscore ~ 1 + (1 | school)",
  fit.1 = "mscore ~ ses + (ses | school)",
  fit.2 = "mscore ~ flp + ses + flp * ses + (ses | school)"
)

# ---------------------------------------------------------------- helpers
# Evaluate expr, collecting (and muffling) its warnings and messages
capture <- function(expr) {
  warns <- character(0)
  msgs <- character(0)
  val <- withCallingHandlers(expr,
    warning = function(w) {
      warns <<- c(warns, conditionMessage(w))
      invokeRestart("muffleWarning")
    },
    message = function(m) {
      msgs <<- c(msgs, sub("\n$", "", conditionMessage(m)))
      invokeRestart("muffleMessage")
    })
  list(value = val, warnings = warns, messages = msgs)
}

# Group ids as numbers when all levels are numeric, else strings
level_ids <- function(lv) {
  num <- suppressWarnings(as.numeric(lv))
  if (all(!is.na(num))) num else lv
}

# Conditional modes and variances of a fit with any number of grouping factors:
#   ranef: factor -> {levels, names, values (one row per level)},
#   condvar: factor -> list, one entry per term on that factor, of
#     {names, cov: [levels x q x q]} from ranef(fit, condVar = TRUE)
# (multilevel_lme4.R, multilevel_lme4_more.R)
ranef_json <- function(fit) {
  re <- ranef(fit, condVar = TRUE)
  out_re <- list()
  out_cv <- list()
  for (f in names(re)) {
    df <- re[[f]]
    out_re[[f]] <- list(levels = I(rownames(df)), names = I(colnames(df)),
                        values = unname(as.matrix(df)))
    pv <- attr(df, "postVar")
    if (is.null(pv)) pv <- attr(df, "condVar")
    if (!is.list(pv)) pv <- list(pv)
    cn <- getME(fit, "cnms")
    cn <- cn[names(cn) == f]
    out_cv[[f]] <- lapply(seq_along(pv), function(t) {
      a <- pv[[t]]
      list(names = I(cn[[t]]),
           cov = lapply(seq_len(dim(a)[3]), function(l) a[, , l, drop = FALSE][, , 1]))
    })
  }
  list(ranef = out_re, condvar = out_cv)
}

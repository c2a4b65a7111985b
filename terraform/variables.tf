# Inputs of a spotleash deployment. Nothing secret is an input: the VAST API key and the heartbeat
# signing key are Secret Manager secrets whose values are added out of band (see docs/deploy.md).

variable "project" {
  description = "Google Cloud project id to deploy into."
  type        = string

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{4,28}[a-z0-9]$", var.project))
    error_message = "project must be a project id: 6-30 characters, lowercase letters, digits and hyphens, starting with a letter."
  }
}

variable "billing_account" {
  description = "Billing account id (XXXXXX-XXXXXX-XXXXXX) the budget is created on."
  type        = string

  validation {
    condition     = can(regex("^[0-9A-F]{6}-[0-9A-F]{6}-[0-9A-F]{6}$", var.billing_account))
    error_message = "billing_account must look like 012345-6789AB-CDEF01."
  }
}

variable "region" {
  description = "Region of the functions, the scheduler job and the source bucket."
  type        = string
  default     = "us-central1"

  validation {
    condition     = can(regex("^[a-z]+-[a-z]+[0-9]$", var.region))
    error_message = "region must be a Google Cloud region such as us-central1."
  }
}

variable "zones" {
  description = "Zones tried in order when one has no Spot capacity; all must be in var.region."
  type        = list(string)
  default     = ["us-central1-a", "us-central1-b", "us-central1-c"]

  validation {
    condition     = length(var.zones) > 0 && alltrue([for z in var.zones : can(regex("^[a-z]+-[a-z]+[0-9]-[a-z]$", z))])
    error_message = "zones must be a non-empty list of zones such as us-central1-a."
  }
}

variable "firestore_location" {
  description = "Firestore location (a region such as us-central1, or a multi-region such as nam5). Cannot change after creation."
  type        = string
  default     = "us-central1"

  validation {
    condition     = can(regex("^([a-z]+-[a-z]+[0-9]|nam5|eur3)$", var.firestore_location))
    error_message = "firestore_location must be a region (us-central1) or nam5 / eur3."
  }
}

variable "deployment_id" {
  description = "Label value marking every instance and resource of this deployment (GCE label rules)."
  type        = string
  default     = "default"

  validation {
    condition     = can(regex("^[a-z0-9][a-z0-9_-]{0,62}$", var.deployment_id))
    error_message = "deployment_id must be a label value: 1-63 lowercase letters, digits, '_' or '-', starting with a letter or digit."
  }
}

variable "machine_type" {
  description = "Smallest Spot machine type the launcher creates."
  type        = string
  default     = "e2-highmem-4"

  validation {
    condition     = can(regex("^[a-z][a-z0-9]*-[a-z0-9-]+$", var.machine_type))
    error_message = "machine_type must be a Compute Engine machine type such as e2-highmem-4."
  }
}

variable "max_runtime_s" {
  description = "Hard cap on an instance's life in seconds (GCE max_run_duration); at most 3 hours."
  type        = number
  default     = 10800

  validation {
    condition     = var.max_runtime_s >= 60 && var.max_runtime_s <= 10800 && floor(var.max_runtime_s) == var.max_runtime_s
    error_message = "max_runtime_s must be a whole number of seconds between 60 and 10800 (3 hours)."
  }
}

variable "monthly_budget_usd" {
  description = "The launcher refuses a launch whose worst-case cost would take the month past this."
  type        = number
  default     = 50

  validation {
    condition     = var.monthly_budget_usd > 0
    error_message = "monthly_budget_usd must be positive."
  }
}

variable "budget_thresholds_usd" {
  description = "Billing alert thresholds in USD, ascending; the last one is the budget amount and, when crossed, makes the reaper stop everything."
  type        = list(number)
  default     = [20, 50, 100]

  validation {
    condition = (
      length(var.budget_thresholds_usd) > 0 &&
      alltrue([for v in var.budget_thresholds_usd : v > 0]) &&
      join(",", [for v in var.budget_thresholds_usd : format("%012.2f", v)]) == join(",", sort([for v in var.budget_thresholds_usd : format("%012.2f", v)]))
    )
    error_message = "budget_thresholds_usd must be a non-empty ascending list of positive amounts, e.g. [20, 50, 100]."
  }
}

variable "budget_stop_all" {
  description = "Past the last threshold, the reaper deletes every instance of the deployment (not only refuses launches)."
  type        = bool
  default     = true
}

variable "reap_dry_run" {
  description = "The reaper decides and audits but deletes nothing (for a first, careful deployment)."
  type        = bool
  default     = false
}

variable "max_instances_total" {
  description = "Live instances the whole deployment may hold."
  type        = number
  default     = 10

  validation {
    condition     = var.max_instances_total >= 1 && var.max_instances_total <= 100
    error_message = "max_instances_total must be between 1 and 100."
  }
}

variable "function_max_instances" {
  description = "Upper bound on concurrent instances of each function (caps cost under a message storm)."
  type        = number
  default     = 5

  validation {
    condition     = var.function_max_instances >= 1 && var.function_max_instances <= 100
    error_message = "function_max_instances must be between 1 and 100."
  }
}

variable "enable_vast" {
  description = "Give the VM functions the VAST.ai API key (the secret must then have a version before apply). false: GCE only."
  type        = bool
  default     = true
}

variable "package_channel" {
  description = "Channel whose pointer (latest-<channel>.txt) launches resolve: `spotleash publish --channel`."
  type        = string
  default     = "main"

  validation {
    condition     = can(regex("^[a-z0-9][a-z0-9._-]{0,62}$", var.package_channel))
    error_message = "package_channel must be 1-63 lowercase letters, digits, '.', '_' or '-'."
  }
}

variable "package_publishers" {
  description = "Principals that may run `spotleash publish` (e.g. [\"user:you@example.com\"]); object user on the package bucket only."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for m in var.package_publishers : can(regex("^(user|group|serviceAccount):", m))])
    error_message = "package_publishers must be IAM members of the form user:..., group:... or serviceAccount:... (never allUsers)."
  }
}

variable "package_retention_days" {
  description = "Archives under packages/ older than this are deleted (republish to keep one)."
  type        = number
  default     = 90

  validation {
    condition     = var.package_retention_days >= 7
    error_message = "package_retention_days must be at least 7."
  }
}

variable "source_archive_path" {
  description = "Path of the function source archive built by scripts/build_function_archive.py (empty: terraform/build/spotleash-functions.zip)."
  type        = string
  default     = ""
}

variable "firestore_delete_protection" {
  description = "Protect the Firestore database from deletion; set false only to tear the deployment down."
  type        = bool
  default     = true
}

variable "labels" {
  description = "Extra labels put on every resource that takes labels."
  type        = map(string)
  default     = {}

  validation {
    condition = alltrue([
      for k, v in var.labels : can(regex("^[a-z][a-z0-9_-]{0,62}$", k)) && can(regex("^[a-z0-9_-]{0,63}$", v))
    ])
    error_message = "labels must follow Google label rules: lowercase keys starting with a letter, values of lowercase letters, digits, '_' and '-'."
  }
}

variable "network" {
  description = "VPC network the instances run in (the launcher's default: the project's default network)."
  type        = string
  default     = "default"
}

variable "front_port" {
  description = "TCP port of the instances' TLS front (spotleash.wire.agent_config.FRONT_PORT)."
  type        = number
  default     = 8443

  validation {
    condition     = var.front_port >= 1024 && var.front_port <= 65535 && floor(var.front_port) == var.front_port
    error_message = "front_port must be a TCP port between 1024 and 65535."
  }
}

variable "router_source_ranges" {
  description = "CIDR ranges of the machines whose router reaches the instances' TLS front (empty: no firewall rule, the front is unreachable from outside the VPC)."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for r in var.router_source_ranges : can(cidrhost(r, 0))])
    error_message = "router_source_ranges must be CIDR ranges such as 203.0.113.7/32."
  }
}

variable "agent_principals" {
  description = "Principals that run the local agent (e.g. [\"user:you@example.com\"] or a service account): publisher on the demand, lease, release and reap topics only. Empty: grant it yourself (a project Owner has it)."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for m in var.agent_principals : can(regex("^(user|group|serviceAccount):[^@]+@[^@]+$", m))])
    error_message = "agent_principals must be IAM members of the form user:..., group:... or serviceAccount:... (never allUsers or allAuthenticatedUsers)."
  }
}

variable "dashboard_viewers" {
  description = "Principals that may open the dashboard (e.g. [\"user:you@example.com\"]): run.invoker on on_dashboard only. Empty: nobody."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for m in var.dashboard_viewers : can(regex("^(user|group|serviceAccount):[^@]+@[^@]+$", m))])
    error_message = "dashboard_viewers must be IAM members of the form user:..., group:... or serviceAccount:... (never allUsers or allAuthenticatedUsers: the dashboard is not public)."
  }
}

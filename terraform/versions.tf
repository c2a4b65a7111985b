terraform {
  required_version = ">= 1.5.0"

  required_providers {
    google = {
      source  = "hashicorp/google"
      version = ">= 6.10, < 7.0"
    }
  }
}

provider "google" {
  project = var.project
  region  = var.region

  # Billing budgets are called against the billing account, which needs a quota project.
  user_project_override = true
  billing_project       = var.project

  # Every resource that takes labels gets these (and resources below also set them explicitly).
  default_labels = local.labels
}

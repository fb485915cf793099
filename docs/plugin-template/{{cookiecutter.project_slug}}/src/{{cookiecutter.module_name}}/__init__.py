# SPDX-License-Identifier: Apache-2.0
"""{{ cookiecutter.project_name }}."""

"""The values file the compiler-diagnostics tests start from: one AWS endpoint, written out so that
the tests' line and column numbers point into a text they can read."""

from __future__ import annotations

INJECTOR = """\
    injector:
      label: aws-role
      token_environment_variable_name: AWS_WEB_IDENTITY_TOKEN_FILE
      label_value_environment_variable_name: AWS_ROLE_ARN
"""


def aws_values(constraint: str = "(namespace=myns)", *, issuer: str = "", injector: bool = True) -> str:
    """One endpoint ``aws`` (lines 3 to 11, then ``issuer``'s lines inside its issuer, then the
    injector's four) whose azRules filter is ``constraint``."""
    return (
        f"""\
sts:
  endpoints:
  - name: aws
    audience: sts.amazonaws.com
    path: /aws
    azRules:
    - scope: filter
      constraint: "{constraint}"
    issuer:
      host: d1dexjaad4ian0.cloudfront.net
      keypair: aws-keys
"""
        + issuer
        + (INJECTOR if injector else "")
    )

process RESOLVE_MODEL {
    tag "${model}/${version}"
    label 'cpu_small'

    input:
    tuple val(model), val(version), path(overrides)  // overrides: a YAML/JSON file, or [] for none
    val code                                         // digest of the Python sources: a change reruns the task

    output:
    path 'model.json', emit: model

    script:
    def args = task.ext.args ?: ''
    def with_overrides = overrides ? "--params ${overrides}" : ''
    """
    aiod resolve-model --model '${model}' --version '${version}' ${with_overrides} --out model.json ${args}
    """

    stub:
    """
    echo '{"family": "${model}", "version": "${version}", "params": {}}' > model.json
    """
}

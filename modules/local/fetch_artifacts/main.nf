process FETCH_ARTIFACTS {
    tag "${model.baseName}"
    label 'cpu_small'

    input:
    path model       // model.json from RESOLVE_MODEL, with the artifact's locations
    val code         // digest of the Python files this step runs: a change reruns the task

    output:
    path 'model_fetched.json', emit: model

    script:
    def args = task.ext.args ?: ''
    """
    aiod fetch --model ${model} --out model_fetched.json ${args}
    """

    stub:
    """
    cp ${model} model_fetched.json
    """
}

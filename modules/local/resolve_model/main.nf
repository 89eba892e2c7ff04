process RESOLVE_MODEL {
    tag "${request.models ? 'models' : "${request.model}/${request.version ?: 'default'}"}"
    label 'cpu_small'
    conda "${projectDir}/envs/classical.yml"

    input:
    // request: [model, version, task, models, source] ('' = not given; version/task '': the
    // manifest's first); file: the --model_params or --models file, or [], whose original path is source
    tuple val(request), path(file)
    val registry     // digest of the registry manifests: an edited manifest reruns the task
    val code         // digest of the Python files this step runs: a change reruns the task

    output:
    path 'models/*.json', emit: models       // models/<k>.json: the k-th model's resolved spec, its label and subdir

    script:
    def args = task.ext.args ?: ''
    def request_args = request.models
        ? "--models '${file ?: request.models.replace("'", "'\\''")}'" + (file ? " --models-source '${request.source}'" : '')
        : "--model '${request.model}'" + (request.version ? " --version '${request.version}'" : '') + (request.task ? " --task '${request.task}'" : '') +
          (file ? " --params ${file} --params-source '${request.source}'" : '')
    """
    rm -rf models
    aiod resolve-model ${request_args} --out-dir models ${args}
    """

    stub:  // the real check (it reads no image and downloads nothing); no artifact is fetched
    def args = task.ext.args ?: ''
    def request_args = request.models
        ? "--models '${file ?: request.models.replace("'", "'\\''")}'" + (file ? " --models-source '${request.source}'" : '')
        : "--model '${request.model}'" + (request.version ? " --version '${request.version}'" : '') + (request.task ? " --task '${request.task}'" : '')
    """
    rm -rf models
    aiod resolve-model ${request_args} --out-dir models ${args}
    """
}
